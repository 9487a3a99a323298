"""Jobs shared by several processes on one PostgreSQL: claims, leases and take-overs.

Claims and take-overs run one at a time across every process (a transaction-scoped advisory
lock): the limits count jobs in every process, and two claims that each saw one free slot
must not both take it. `FOR UPDATE SKIP LOCKED` alone would keep two claimers off one row,
not off one slot. Claims are few (one per job start), so the lock costs nothing that shows.
Leases are in the database's own time, so the processes' clocks need not agree.
"""

from __future__ import annotations

import logging

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.core.jobs import Job
from bot.storage.job_rows import JOB_COLUMNS, job_from_row
from bot.storage.leases import (
    Claim,
    ClaimLimits,
    EventKind,
    Renewal,
    SharedEvent,
)
from bot.storage.postgres_requests import LIVE, STARTED, PostgresRequests

log = logging.getLogger(__name__)

CLAIM_LOCK_CLASS = 0x616E6963  # "anic": claims and take-overs, one at a time per schema
# Candidates read beyond twice the room, for servers whose limit a second job would pass.
CANDIDATES_SPARE = 50


class PostgresLeases(PostgresRequests):
    """The SharedJobs of one process, on the store's pool and its membership connection."""

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
            self.lease_seconds,
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
                self.lease_seconds,
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
