"""Jobs and their state changes in PostgreSQL: each change is one guarded UPDATE."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.redaction import scrub
from bot.storage.base import InvalidTransition, StorageUnavailable
from bot.storage.job_rows import JOB_COLUMNS, MAX_JOB_ID, UNFINISHED, job_from_row

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
)
ACQUIRE_TIMEOUT_SECONDS = 10.0


class _Increment:
    """A column change that adds one to the stored value."""


class _KeepPredictTime:
    """A column change that adds the stored predict_time (the GPU time already paid for)."""


class PostgresJobRecords:
    """Every job and every change of its state; all SQL here is parameterised."""

    def __init__(self, pool: asyncpg.Pool, *, clock: Clock = time.time) -> None:
        self._pool = pool
        self._clock = clock

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
        now = self._clock()
        row = await self._fetchrow(
            "INSERT INTO jobs (guild_id, channel_id, requester_id, input_json, seed, status, "
            "parent_job_id, created_at, updated_at, output_format, upload_limit, "
            "interaction_token) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
            f"RETURNING {JOB_COLUMNS}",
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
        assert row is not None
        return job_from_row(row)

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

    async def set_request_message(self, job_id: int, message_id: int) -> Job:
        """Remember the message that shows the request's status; its token is no longer needed."""
        return await self._update(
            job_id, None, request_message_id=message_id, interaction_token=None
        )

    async def mark_submitted(self, job_id: int) -> Job:
        """Queued -> submitted: written before the create request is sent."""
        return await self._update(
            job_id, (JobStatus.QUEUED,), status=JobStatus.SUBMITTED, submitted_at=self._clock()
        )

    async def mark_running(self, job_id: int, prediction_id: str) -> Job:
        """Submitted -> running: the API accepted the prediction."""
        return await self._update(
            job_id,
            (JobStatus.SUBMITTED, JobStatus.RUNNING),
            status=JobStatus.RUNNING,
            prediction_id=prediction_id,
            started_at=self._clock(),
        )

    async def mark_delivering(
        self, job_id: int, *, predict_time: float | None, model_version: str | None = None
    ) -> Job:
        """Running -> delivering: the prediction succeeded and the result is being posted."""
        return await self._update(
            job_id,
            (JobStatus.RUNNING, JobStatus.DELIVERING),
            status=JobStatus.DELIVERING,
            predict_time=predict_time,
            model_version=model_version,
        )

    async def mark_rerun(self, job_id: int) -> Job:
        """Running or delivering -> submitted again: the output expired before it was posted."""
        return await self._update(
            job_id,
            (JobStatus.RUNNING, JobStatus.DELIVERING),
            status=JobStatus.SUBMITTED,
            prediction_id=None,
            # The first run was billed too: keep its GPU time for the usage figures.
            earlier_predict_time=_KeepPredictTime(),
            predict_time=None,
            submitted_at=self._clock(),
            started_at=None,
            reruns=_Increment(),
        )

    async def mark_done(self, job_id: int, *, result_message_id: int) -> Job:
        """Delivering -> done: the result message exists."""
        return await self._update(
            job_id,
            (JobStatus.DELIVERING,),
            status=JobStatus.DONE,
            result_message_id=result_message_id,
            completed_at=self._clock(),
            interaction_token=None,
        )

    async def mark_failed(
        self, job_id: int, error: str, *, predict_time: float | None = None
    ) -> Job:
        """Any unfinished state -> failed, with the reason shown to the requester.

        `predict_time` is the GPU time a failed prediction was still billed for. The reason
        may quote the API or an exception: it is stored with credentials masked.
        """
        billed = {} if predict_time is None else {"predict_time": predict_time}
        return await self._update(
            job_id,
            tuple(JobStatus(s) for s in UNFINISHED),
            status=JobStatus.FAILED,
            error=scrub(error),
            completed_at=self._clock(),
            interaction_token=None,
            **billed,
        )

    async def mark_canceled(
        self, job_id: int, reason: str | None = None, *, predict_time: float | None = None
    ) -> Job:
        """A pending state -> canceled (with the GPU time billed before it stopped, if any)."""
        billed = {} if predict_time is None else {"predict_time": predict_time}
        return await self._update(
            job_id,
            (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING),
            status=JobStatus.CANCELED,
            error=None if reason is None else scrub(reason),
            completed_at=self._clock(),
            interaction_token=None,
            **billed,
        )

    async def mark_deleted(self, job_id: int) -> Job:
        """Record that the result message was deleted."""
        return await self._update(job_id, None, deleted=True)

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
            if isinstance(value, _Increment):
                assignments.append(f"{name} = {name} + 1")
            elif isinstance(value, _KeepPredictTime):
                # The right-hand side reads the row as it was before this UPDATE.
                assignments.append(f"{name} = {name} + COALESCE(predict_time, 0)")
            else:
                params.append(value.value if isinstance(value, JobStatus) else value)
                assignments.append(f"{name} = ${len(params)}")
        sql = f"UPDATE jobs SET {', '.join(assignments)} WHERE id = $1"
        if allowed_from:
            params.append([s.value for s in allowed_from])
            sql += f" AND status = ANY(${len(params)}::text[])"
        row = await self._fetchrow(f"{sql} RETURNING {JOB_COLUMNS}", *params)
        if row is None:
            current = await self.get(job_id)
            state = current.status.value if current else "missing"
            raise InvalidTransition(f"job {job_id} is {state}; cannot apply {sorted(changes)}")
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
