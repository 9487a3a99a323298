"""A shared store's requests: held until shown, canceled, counted, read, announced.

The side of `SharedJobs` that a process's commands and its queue mirror use; the claims,
leases and take-overs that decide who runs what are `postgres_leases.py`'s.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from asyncpg.pool import PoolConnectionProxy

from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.redaction import scrub
from bot.storage.job_rows import JOB_COLUMNS, MAX_JOB_ID, UNFINISHED, job_from_row
from bot.storage.leases import EventKind, SharedEvent
from bot.storage.postgres_events import event_from, payload_of
from bot.storage.postgres_jobs import PostgresJobRecords, insert_job
from bot.storage.postgres_membership import PostgresMembership

MEMBER_LOCK_CLASS = 0x616E6975  # "aniu": one admission at a time per member and server
STARTED = [JobStatus.SUBMITTED.value, JobStatus.RUNNING.value, JobStatus.DELIVERING.value]
LIVE = "expires_at > now()"


class PostgresRequests:
    """Requests and cancels of one process's SharedJobs (see `PostgresLeases`)."""

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
                self.lease_seconds,
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
