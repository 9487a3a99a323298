"""Jobs shared by several processes on one PostgreSQL: claims, leases, take-over, cancels.

Claims and take-overs run one at a time across every process (a transaction-scoped advisory
lock): the limits count jobs in every process, and two claims that each saw one free slot
must not both take it. `FOR UPDATE SKIP LOCKED` alone would keep two claimers off one row,
not off one slot. Claims are few (one per job start), so the lock costs nothing that shows.
Leases are in the database's own time, so the processes' clocks need not agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.redaction import scrub
from bot.storage.job_rows import JOB_COLUMNS, MAX_JOB_ID, UNFINISHED, job_from_row
from bot.storage.leases import (
    Claim,
    ClaimLimits,
    EventKind,
    Renewal,
    SharedEvent,
)
from bot.storage.postgres_events import event_from, payload_of
from bot.storage.postgres_jobs import PostgresJobRecords, insert_job
from bot.storage.postgres_membership import PostgresMembership

log = logging.getLogger(__name__)

CLAIM_LOCK_CLASS = 0x616E6963  # "anic": claims and take-overs, one at a time per schema
MEMBER_LOCK_CLASS = 0x616E6975  # "aniu": one admission at a time per member and server
STARTED = [JobStatus.SUBMITTED.value, JobStatus.RUNNING.value, JobStatus.DELIVERING.value]
LIVE = "expires_at > now()"
# Candidates read beyond twice the room, for servers whose limit a second job would pass.
CANDIDATES_SPARE = 50


class PostgresLeases:
    """The SharedJobs of one process, on the store's pool and its membership connection."""

    def __init__(
        self,
        records: PostgresJobRecords,
        membership: PostgresMembership,
        *,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._records = records
        self._membership = membership
        self._clock = clock
        self.owner = membership.owner
        self.lease_seconds = lease_seconds
        records.lease_owner = self.owner  # from now on, a job leased elsewhere is fenced

    def _lease(self) -> float:
        """The lease as the interval SQL adds to now()."""
        return self.lease_seconds

    async def add_held(
        self,
        *,
        guild_id: int,
        channel_id: int,
        requester_id: int,
        request: GenerationRequest,
        member_cap: int,
        parent_job_id: int | None = None,
        upload_limit: int | None = None,
        interaction_token: str | None = None,
    ) -> Job | None:
        """Record a queued job held by this process until `release`; None past the member cap."""
        async with self._records._connection() as connection, connection.transaction():
            # Two requests of one member (two shards during a resharding) count one at a time.
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                MEMBER_LOCK_CLASS,
                f"{guild_id}:{requester_id}",
            )
            pending = await connection.fetchval(
                "SELECT count(*) FROM jobs WHERE guild_id = $1 AND requester_id = $2 "
                "AND status = ANY($3::text[])",
                guild_id,
                requester_id,
                list(UNFINISHED),
            )
            if pending >= member_cap:
                return None
            job = await insert_job(
                connection,
                self._clock(),
                guild_id=guild_id,
                channel_id=channel_id,
                requester_id=requester_id,
                request=request,
                parent_job_id=parent_job_id,
                upload_limit=upload_limit,
                interaction_token=interaction_token,
            )
            await connection.execute(
                "INSERT INTO job_leases (job_id, owner, expires_at, claimed) "
                "VALUES ($1, $2, now() + make_interval(secs => $3), false)",
                job.id,
                self.owner,
                self._lease(),
            )
            return job

    async def release(self, job_id: int) -> None:
        """Let a held queued job be claimed by any process, and tell them."""
        async with self._records._connection() as connection:
            await connection.execute(
                "DELETE FROM job_leases WHERE job_id = $1 AND owner = $2 AND NOT claimed",
                job_id,
                self.owner,
            )
        await self.announce(SharedEvent(EventKind.FREED, job_id=job_id))

    async def claim(self, limits: ClaimLimits, most: int, *, take_lapsed: bool = True) -> Claim:
        """Claim up to `most` queued jobs, servers in turn, within the limits; lease them.

        `take_lapsed` False: only jobs no process ever held (and lapsed Cancel wishes), as
        just after an outage, when the lapsed leases' owners may still be about to renew.
        """
        if most <= 0:
            return Claim([], frozenset())
        async with self._records._connection() as connection, connection.transaction():
            await self._lock_claims(connection)
            running: dict[int, int] = {
                int(guild): int(count)
                for guild, count in await connection.fetch(
                    "SELECT guild_id, count(*) FROM ("
                    "SELECT guild_id FROM jobs WHERE status = ANY($1::text[]) UNION ALL "
                    "SELECT j.guild_id FROM job_leases l JOIN jobs j ON j.id = l.job_id "
                    f"WHERE l.claimed AND l.{LIVE} AND j.status = 'queued'"
                    ") AS started GROUP BY guild_id",
                    STARTED,
                )
            }
            room = min(most, limits.running_total - sum(running.values()))
            if room <= 0:
                return Claim([], frozenset())
            # Servers at their limit are left out; of the rest, claimable jobs in the order the
            # round-robin takes them: each server's first (least recently served server
            # first, never served ones oldest first), then each one's second, and so on.
            full = [g for g, n in running.items() if n >= limits.running_per_guild(g)]
            candidates = await connection.fetch(
                "SELECT c.id, c.guild_id FROM (SELECT id, guild_id, row_number() OVER "
                "(PARTITION BY guild_id ORDER BY id) AS place FROM jobs j "
                "WHERE status = 'queued' AND guild_id <> ALL($1::bigint[]) AND NOT EXISTS "
                f"(SELECT 1 FROM job_leases l WHERE l.job_id = j.id AND (l.{LIVE} "
                "OR NOT ($4 OR l.owner = '')))) AS c "
                "LEFT JOIN guild_turns t ON t.guild_id = c.guild_id WHERE c.place <= $2 "
                "ORDER BY c.place, COALESCE(t.turn, -1), c.id LIMIT $3",
                full,
                room,
                room * 2 + CANDIDATES_SPARE,
                take_lapsed,
            )
            picked = _within_limits(candidates, running, limits, room)
            if not picked:
                return Claim([], frozenset())
            # Locked, and still queued: a Cancel made meanwhile (which locks the row first) wins.
            rows = await connection.fetch(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1::bigint[]) "
                "AND status = 'queued' ORDER BY id FOR UPDATE",
                picked,
            )
            by_id = {job.id: job for job in map(job_from_row, rows)}
            taken = await self._lease_lapsed(connection, sorted(by_id))
            chosen = [by_id[job_id] for job_id in picked if job_id in taken]
            if not chosen:
                return Claim([], frozenset())
            # Each claimed job moves its server to the back of the rotation, in claim order.
            await connection.execute(
                "INSERT INTO guild_turns (guild_id, turn) "
                "SELECT guild_id, nextval('guild_turn_numbers') FROM unnest($1::bigint[]) "
                "WITH ORDINALITY AS claimed (guild_id, n) ORDER BY n "
                "ON CONFLICT (guild_id) DO UPDATE SET turn = excluded.turn",
                _servers_by_last_claim(chosen),
            )
            for job in chosen:
                await self._notify(connection, SharedEvent(EventKind.CLAIMED, job.id, job.guild_id))
        return Claim(chosen, frozenset(job_id for job_id in picked if taken.get(job_id)))

    async def take_over(self) -> Claim:
        """Lease every started job whose lease expired (its process died); return them."""
        async with self._records._connection() as connection, connection.transaction():
            orphans = await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM jobs j WHERE status = ANY($1::text[]) AND NOT "
                f"EXISTS (SELECT 1 FROM job_leases l WHERE l.job_id = j.id AND l.{LIVE}))",
                STARTED,
            )
            if not orphans:
                return Claim([], frozenset())  # the common case: no lock taken
            await self._lock_claims(connection)
            rows = await connection.fetch(
                f"SELECT {JOB_COLUMNS} FROM jobs j WHERE status = ANY($1::text[]) AND NOT EXISTS "
                f"(SELECT 1 FROM job_leases l WHERE l.job_id = j.id AND l.{LIVE}) ORDER BY id",
                STARTED,
            )
            candidates = [job_from_row(row) for row in rows]
            taken = await self._lease_lapsed(connection, [job.id for job in candidates])
            jobs = [job for job in candidates if job.id in taken]
        if jobs:
            log.info("took over %d jobs whose process stopped renewing its leases", len(jobs))
        return Claim(jobs, frozenset(job_id for job_id, wanted in taken.items() if wanted))

    async def _lease_lapsed(
        self, connection: PoolConnectionProxy, job_ids: list[int]
    ) -> dict[int, bool]:
        """Lease these jobs unless another lease on one is live; return {taken: cancel wanted}.

        The lapse is judged on the newest row (its owner may have renewed it meanwhile: the
        renewal of a lapsed lease nobody took yet keeps it), in id order, as renewals lock.
        """
        rows = await connection.fetch(
            "INSERT INTO job_leases AS l (job_id, owner, expires_at, claimed) "
            "SELECT id, $2, now() + make_interval(secs => $3), true FROM unnest($1::bigint[]) "
            "AS id ORDER BY id ON CONFLICT (job_id) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at, claimed = true WHERE l.expires_at <= now() "
            "RETURNING job_id, cancel_requested",
            sorted(job_ids),
            self.owner,
            self._lease(),
        )
        return {int(row[0]): bool(row[1]) for row in rows}

    async def renew(self) -> Renewal:
        """Extend this process's leases; say which jobs are still ours and which to cancel."""
        async with self._records._connection() as connection:
            rows = await connection.fetch(
                # A lapsed lease nobody took over yet (the database was away) is still ours.
                # Rows are locked in id order, as claims and take-overs lock them.
                "UPDATE job_leases SET expires_at = now() + make_interval(secs => $2) "
                "WHERE job_id IN (SELECT job_id FROM job_leases WHERE owner = $1 "
                "ORDER BY job_id FOR UPDATE) AND owner = $1 RETURNING job_id, cancel_requested",
                self.owner,
                self._lease(),
            )
        held = frozenset(int(row[0]) for row in rows)
        return Renewal(held, frozenset(int(row[0]) for row in rows if row[1]))

    async def let_go(self, job_id: int) -> None:
        """Drop the lease of a job this process stopped working on, and tell the others."""
        async with self._records._connection() as connection:
            await connection.execute(
                "DELETE FROM job_leases WHERE job_id = $1 AND owner = $2", job_id, self.owner
            )
        await self.announce(SharedEvent(EventKind.FREED, job_id=job_id))

    async def let_go_all(self) -> None:
        """End every lease of this process at once (a clean stop): others take over now."""
        async with self._records._connection() as connection:
            await connection.execute(
                "UPDATE job_leases SET expires_at = now() WHERE job_id IN (SELECT job_id FROM "
                "job_leases WHERE owner = $1 ORDER BY job_id FOR UPDATE) AND owner = $1",
                self.owner,
            )
        await self.announce(SharedEvent(EventKind.FREED))

    async def cancel(self, job_id: int, reason: str) -> Job | None:
        """Cancel a job no process has claimed yet; None if it is claimed, running or ended."""
        if not 0 < job_id <= MAX_JOB_ID:
            return None
        now = self._clock()
        async with self._records._connection() as connection, connection.transaction():
            # The job's row first, as a claim locks it: the two never both succeed.
            status = await connection.fetchval(
                "SELECT status FROM jobs WHERE id = $1 FOR UPDATE", job_id
            )
            if status != JobStatus.QUEUED.value:
                return None
            row = await connection.fetchrow(
                "UPDATE jobs SET status = 'canceled', error = $2, completed_at = $3, "
                "updated_at = $3, interaction_token = NULL WHERE id = $1 AND NOT EXISTS "
                "(SELECT 1 FROM job_leases l WHERE l.job_id = jobs.id AND l.claimed "
                f"AND l.{LIVE}) RETURNING {JOB_COLUMNS}",
                job_id,
                scrub(reason),
                now,
            )
        return job_from_row(row) if row else None

    async def request_cancel(self, job_id: int) -> bool:
        """Store that a started job should stop, for whichever process runs it; False if ended."""
        if not 0 < job_id <= MAX_JOB_ID:
            return False
        async with self._records._connection() as connection, connection.transaction():
            status = await connection.fetchval(
                "SELECT status FROM jobs WHERE id = $1 FOR UPDATE", job_id
            )
            if status not in (JobStatus.QUEUED.value, *STARTED[:2]):
                return False
            # A job with no lease row (its process never took one) is taken over with the wish.
            await connection.execute(
                "INSERT INTO job_leases (job_id, owner, expires_at, claimed, cancel_requested) "
                "VALUES ($1, '', now(), true, true) "
                "ON CONFLICT (job_id) DO UPDATE SET cancel_requested = true",
                job_id,
            )
            await self._notify(connection, SharedEvent(EventKind.CANCEL, job_id))
        return True

    async def queued_for(self, shard_count: int, shard_ids: Sequence[int]) -> list[int]:
        """Return the ids of these shards' servers' unclaimed queued jobs, oldest first.

        Held ones count only if this process holds them: another live process's request is
        still being shown (its message is on its way) and is that process's to show.
        """
        rows = await self._records._fetch(
            "SELECT id FROM jobs j WHERE status = 'queued' "
            "AND ((guild_id >> 22) % $1) = ANY($2::integer[]) AND NOT EXISTS "
            f"(SELECT 1 FROM job_leases l WHERE l.job_id = j.id AND l.{LIVE} "
            "AND (l.claimed OR l.owner <> $3)) ORDER BY id",
            shard_count,
            list(shard_ids),
            self.owner,
        )
        return [int(row[0]) for row in rows]

    async def jobs(self, job_ids: Sequence[int]) -> list[Job]:
        """Return these jobs, oldest first (ids no job has are left out)."""
        rows = await self._records._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id",
            list(job_ids),
        )
        return [job_from_row(row) for row in rows]

    async def requeue_lapsed(self) -> int:
        """Drop the lapsed leases of queued jobs (held or claimed by a process that died)."""
        async with self._records._connection() as connection:
            status = await connection.execute(
                # A Cancel asked of the dead claimer stays, for whoever claims the job next.
                # Locked in id order, as claims, take-overs and renewals lock.
                "DELETE FROM job_leases WHERE job_id IN (SELECT l.job_id FROM job_leases l "
                "JOIN jobs j ON j.id = l.job_id WHERE j.status = 'queued' "
                "AND l.expires_at <= now() AND NOT l.cancel_requested "
                "ORDER BY l.job_id FOR UPDATE OF l) AND expires_at <= now()"
            )
        return int(status.split()[-1])

    async def pending_for(self, guild_id: int, requester_id: int) -> int:
        """Count a member's unfinished jobs in a server, whichever process holds them."""
        row = await self._records._fetchrow(
            "SELECT count(*) FROM jobs WHERE guild_id = $1 AND requester_id = $2 "
            "AND status = ANY($3::text[])",
            guild_id,
            requester_id,
            list(UNFINISHED),
        )
        return int(row[0]) if row else 0

    async def announce(self, event: SharedEvent) -> None:
        """Tell every process (this one included) about an event."""
        async with self._records._connection() as connection:
            await self._notify(connection, event)

    def listen(self, handler: Callable[[SharedEvent], Awaitable[None] | None]) -> None:
        """Call `handler` with every event announced from now on."""

        def heard(payload: str) -> Awaitable[None] | None:
            """Read the payload; an event this version does not know is skipped."""
            event = event_from(payload)
            return None if event is None else handler(event)

        self._membership.listen(heard)

    async def live_processes(self) -> int:
        """Record that this process lives; return how many processes do (itself included)."""
        return await self._membership.beat()

    async def _notify(self, connection: PoolConnectionProxy, event: SharedEvent) -> None:
        """NOTIFY the event on a connection (sent when its transaction commits)."""
        await connection.execute(
            "SELECT pg_notify($1, $2)", self._membership.channel, payload_of(event)
        )

    async def _lock_claims(self, connection: PoolConnectionProxy) -> None:
        """Wait for other processes' claims and take-overs to end (until this commits)."""
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", CLAIM_LOCK_CLASS
        )


def _within_limits(
    candidates: list[asyncpg.Record],
    running: dict[int, int],
    limits: ClaimLimits,
    room: int,
) -> list[int]:
    """Take candidates in their order while each one's server stays within its limit."""
    running = dict(running)
    picked: list[int] = []
    for job_id, guild_id in candidates:
        if len(picked) == room:
            break
        if running.get(guild_id, 0) < limits.running_per_guild(guild_id):
            picked.append(int(job_id))
            running[guild_id] = running.get(guild_id, 0) + 1
    return picked


def _servers_by_last_claim(chosen: list[Job]) -> list[int]:
    """Each server once, in the order of its last claimed job (one row per conflict key)."""
    last = {job.guild_id: index for index, job in enumerate(chosen)}
    return sorted(last, key=last.__getitem__)
