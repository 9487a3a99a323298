"""Jobs and their state changes in SQLite: each change is one guarded UPDATE."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiosqlite

from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.redaction import scrub
from bot.storage.base import InvalidTransition
from bot.storage.job_rows import JOB_COLUMNS as _COLUMNS
from bot.storage.job_rows import MAX_JOB_ID as MAX_ROWID
from bot.storage.job_rows import UNFINISHED as _UNFINISHED
from bot.storage.job_rows import job_from_row as _job_from_row

Clock = Callable[[], float]


class _Increment:
    """A column change that adds one to the stored value."""


class _KeepPredictTime:
    """A column change that adds the stored predict_time (the GPU time already paid for)."""


class SQLiteJobRecords:
    """Every job and every change of its state; all SQL here is parameterised."""

    def __init__(self, db: aiosqlite.Connection, *, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

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
        cursor = await self._db.execute(
            "INSERT INTO jobs (guild_id, channel_id, requester_id, input_json, seed, status, "
            "parent_job_id, created_at, updated_at, output_format, upload_limit, "
            "interaction_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )
        job_id = cursor.lastrowid
        await cursor.close()
        assert job_id is not None
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: int) -> Job | None:
        """Return one job, or None if there is no such job."""
        if not 0 < job_id <= MAX_ROWID:
            return None  # a forged id SQLite could not even store
        async with self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as c:
            row = await c.fetchone()
        return _job_from_row(row) if row else None

    async def unfinished(self) -> list[Job]:
        """Return every job that is not done, failed or canceled, oldest first."""
        marks = ", ".join("?" for _ in _UNFINISHED)
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status IN ({marks}) ORDER BY id", _UNFINISHED
        ) as cursor:
            rows = await cursor.fetchall()
        return [_job_from_row(row) for row in rows]

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
            tuple(JobStatus(s) for s in _UNFINISHED),
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
        return await self._update(job_id, None, deleted=1)

    async def job_for_prediction(self, prediction_id: str) -> int | None:
        """Return the id of the job that owns a prediction, if any."""
        async with self._db.execute(
            "SELECT id FROM jobs WHERE prediction_id = ?", (prediction_id,)
        ) as cursor:
            row = await cursor.fetchone()
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
            sql = "AND id > ? ORDER BY id ASC LIMIT ?"
            bound = after_id
        else:
            sql = "AND id < ? ORDER BY id DESC LIMIT ?"
            bound = MAX_ROWID if before_id is None else before_id
        # A forged id (a button's custom_id holds any digits) SQLite could not even bind:
        # every stored id lies between these ends, so the page is the same.
        bound = min(max(bound, 0), MAX_ROWID)
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE guild_id = ? AND requester_id = ? "
            f"AND deleted = 0 {sql}",
            (guild_id, requester_id, bound, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        jobs = [_job_from_row(row) for row in rows]
        return jobs[::-1] if after_id is not None else jobs

    async def _update(
        self, job_id: int, allowed_from: Iterable[JobStatus] | None, **changes: Any
    ) -> Job:
        """Apply changes in one statement, only if the job is in an allowed state."""
        changes["updated_at"] = self._clock()
        assignments = ", ".join(_assignment(name, value) for name, value in changes.items())
        params: list[Any] = [
            value.value if isinstance(value, JobStatus) else value
            for value in changes.values()
            if not isinstance(value, _Increment | _KeepPredictTime)
        ]
        sql = f"UPDATE jobs SET {assignments} WHERE id = ?"
        params.append(job_id)
        allowed: Sequence[str] = [s.value for s in allowed_from] if allowed_from else []
        if allowed:
            sql += f" AND status IN ({', '.join('?' for _ in allowed)})"
            params.extend(allowed)
        sql += f" RETURNING {_COLUMNS}"
        # One trip to the database thread, not three (execute, fetch, close): each trip waits
        # for a turn of a busy event loop, and every state change of every job comes here.
        rows = list(await self._db.execute_fetchall(sql, params))
        row = rows[0] if rows else None
        if row is None:
            current = await self.get(job_id)
            state = current.status.value if current else "missing"
            raise InvalidTransition(f"job {job_id} is {state}; cannot apply {sorted(changes)}")
        return _job_from_row(row)


def _assignment(name: str, value: object) -> str:
    """One `column = ...` of an UPDATE; SQLite reads the old row on the right-hand side."""
    if isinstance(value, _Increment):
        return f"{name} = {name} + 1"
    if isinstance(value, _KeepPredictTime):
        return f"{name} = {name} + COALESCE(predict_time, 0)"
    return f"{name} = ?"
