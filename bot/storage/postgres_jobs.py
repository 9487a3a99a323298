"""Jobs and their state changes in PostgreSQL: each change is one guarded UPDATE."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.storage.base import InvalidTransition, LeaseLost, StorageUnavailable
from bot.storage.job_rows import JOB_COLUMNS, MAX_JOB_ID, UNFINISHED, job_from_row
from bot.storage.job_transitions import Increment, JobTransitions, KeepPredictTime

Clock = Callable[[], float]

# What a lost or refused connection raises: the server is down, restarting or out of reach.
# (asyncpg's InterfaceError and InternalClientError also cover misuse, but a store that uses
# its connections only inside `_connection`, one statement at a time, meets them only when
# the server ended the session under it: an idle connection told "terminating connection".)
UNAVAILABLE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # Not the server's absence, but as passing: a deadlock or serialization failure between
    # processes, which the same statement, tried again, gets past.
    asyncpg.TransactionRollbackError,
)
ACQUIRE_TIMEOUT_SECONDS = 10.0
# Changes any process may make to a job another one runs: its status message (shown by the
# process its server's shard runs on) and the deletion of its result.
UNFENCED = frozenset({"request_message_id", "interaction_token", "deleted", "updated_at"})


class PostgresJobRecords(JobTransitions):
    """Every job and every change of its state; all SQL here is parameterised."""

    def __init__(self, pool: asyncpg.Pool, *, clock: Clock = time.time) -> None:
        self._pool = pool
        self._clock = clock
        # Set when processes share the store: a job another process holds a live lease on
        # is theirs, and this one's transitions of it are refused (it lost the lease).
        self.lease_owner: str | None = None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy]:
        """A connection of the pool; a server that went away raises StorageUnavailable."""
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_SECONDS) as connection:
                yield connection
        except UNAVAILABLE_ERRORS as exc:
            raise StorageUnavailable(f"PostgreSQL did not answer ({describe(exc)})") from exc

    async def _fetch(self, sql: str, *params: object) -> list[asyncpg.Record]:
        """Run a query and return its rows."""
        async with self._connection() as connection:
            return list(await connection.fetch(sql, *storable(params)))

    async def _fetchrow(self, sql: str, *params: object) -> asyncpg.Record | None:
        """Run a query and return its first row, if any."""
        async with self._connection() as connection:
            return await connection.fetchrow(sql, *storable(params))

    async def _execute(self, sql: str, *params: object) -> None:
        """Run a statement."""
        async with self._connection() as connection:
            await connection.execute(sql, *storable(params))

    async def add_job(
        self,
        *,
        guild_id: int,
        channel_id: int,
        requester_id: int,
        request: GenerationRequest,
        parent_job_id: int | None = None,
        upload_limit: int | None = None,
        interaction_token: str | None = None,
    ) -> Job:
        """Record a new queued job and return it.

        `interaction_token` lets a restart edit the request's first response; it is cleared
        once the status message id is stored, and when the job ends.
        """
        async with self._connection() as connection:
            return await insert_job(
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

    async def confirm_lease(self, job_id: int) -> None:
        """Raise LeaseLost if another process holds a live lease on the job now."""
        if self.lease_owner is None:
            return  # not shared: this process is the only one
        if await self._fetchrow(
            "SELECT 1 FROM job_leases WHERE job_id = $1 AND owner <> $2 AND expires_at > now()",
            job_id,
            self.lease_owner,
        ):
            raise LeaseLost(f"job {job_id} is leased by another process now")

    async def get(self, job_id: int) -> Job | None:
        """Return one job, or None if there is no such job."""
        if not 0 < job_id <= MAX_JOB_ID:
            return None  # a forged id no bigint could hold
        row = await self._fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return job_from_row(row) if row else None

    async def unfinished(self) -> list[Job]:
        """Return every job that is not done, failed or canceled, oldest first."""
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ANY($1::text[]) ORDER BY id",
            list(UNFINISHED),
        )
        return [job_from_row(row) for row in rows]

    async def job_for_prediction(self, prediction_id: str) -> int | None:
        """Return the id of the job that owns a prediction, if any."""
        row = await self._fetchrow("SELECT id FROM jobs WHERE prediction_id = $1", prediction_id)
        return int(row[0]) if row else None

    async def history(
        self,
        guild_id: int,
        requester_id: int,
        *,
        limit: int,
        before_id: int | None = None,
        after_id: int | None = None,
    ) -> list[Job]:
        """Return a member's requests in a server next to an id, newest first, none deleted."""
        if after_id is not None:
            # The `limit` requests just newer than `after_id`, then newest first like the rest.
            sql = "AND id > $3 ORDER BY id ASC LIMIT $4"
            bound = after_id
        else:
            sql = "AND id < $3 ORDER BY id DESC LIMIT $4"
            bound = MAX_JOB_ID if before_id is None else before_id
        # A forged id (a button's custom_id holds any digits) no bigint could hold: every
        # stored id lies between these ends, so the page is the same.
        bound = min(max(bound, 0), MAX_JOB_ID)
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE guild_id = $1 AND requester_id = $2 "
            f"AND NOT deleted {sql}",
            guild_id,
            requester_id,
            bound,
            limit,
        )
        jobs = [job_from_row(row) for row in rows]
        return jobs[::-1] if after_id is not None else jobs

    async def _update(
        self, job_id: int, allowed_from: Iterable[JobStatus] | None, **changes: Any
    ) -> Job:
        """Apply changes in one statement, only if the job is in an allowed state."""
        if not 0 < job_id <= MAX_JOB_ID:
            raise InvalidTransition(f"job {job_id} is missing; cannot apply {sorted(changes)}")
        changes["updated_at"] = self._clock()
        params: list[Any] = [job_id]
        assignments = []
        for name, value in changes.items():
            if isinstance(value, Increment):
                assignments.append(f"{name} = {name} + 1")
            elif isinstance(value, KeepPredictTime):
                # The right-hand side reads the row as it was before this UPDATE.
                assignments.append(f"{name} = {name} + COALESCE(predict_time, 0)")
            else:
                params.append(value.value if isinstance(value, JobStatus) else value)
                assignments.append(f"{name} = ${len(params)}")
        sql = f"UPDATE jobs SET {', '.join(assignments)} WHERE id = $1"
        if allowed_from:
            params.append([s.value for s in allowed_from])
            sql += f" AND status = ANY(${len(params)}::text[])"
        if self.lease_owner is not None and not changes.keys() <= UNFENCED:
            params.append(self.lease_owner)
            sql += (
                " AND NOT EXISTS (SELECT 1 FROM job_leases l WHERE l.job_id = jobs.id "
                f"AND l.owner <> ${len(params)} AND l.expires_at > now())"
            )
        row = await self._fetchrow(f"{sql} RETURNING {JOB_COLUMNS}", *params)
        if row is None:
            current = await self.get(job_id)
            if current is not None and (not allowed_from or current.status in allowed_from):
                raise LeaseLost(f"job {job_id} is leased by another process now")
            state = current.status.value if current else "missing"
            raise InvalidTransition(f"job {job_id} is {state}; cannot apply {sorted(changes)}")
        return job_from_row(row)


async def insert_job(
    connection: PoolConnectionProxy | asyncpg.Connection,
    now: float,
    *,
    guild_id: int,
    channel_id: int,
    requester_id: int,
    request: GenerationRequest,
    parent_job_id: int | None,
    upload_limit: int | None,
    interaction_token: str | None,
) -> Job:
    """Insert a queued job on a connection (inside the caller's transaction, if any)."""
    row = await connection.fetchrow(
        "INSERT INTO jobs (guild_id, channel_id, requester_id, input_json, seed, status, "
        "parent_job_id, created_at, updated_at, output_format, upload_limit, "
        "interaction_token) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
        f"RETURNING {JOB_COLUMNS}",
        *storable(
            (
                guild_id,
                channel_id,
                requester_id,
                request.to_json(),
                request.seed,
                JobStatus.QUEUED.value,
                parent_job_id,
                now,
                now,
                request.output_format,
                upload_limit,
                interaction_token,
            )
        ),
    )
    assert row is not None
    return job_from_row(row)


def storable(params: tuple[object, ...]) -> tuple[object, ...]:
    """Parameters as PostgreSQL's text takes them: a NUL character (which SQLite keeps, and an
    API's error or id may carry) becomes U+FFFD instead of failing the statement."""
    return tuple(
        value.replace("\x00", "\ufffd") if isinstance(value, str) else value for value in params
    )


def describe(exc: BaseException) -> str:
    """A short reason for a connection problem, without the driver's class path."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
