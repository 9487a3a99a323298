"""Jobs and their state changes in SQLite: each change is one guarded UPDATE."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiosqlite

from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.storage.base import InvalidTransition
from bot.storage.job_rows import JOB_COLUMNS as _COLUMNS
from bot.storage.job_rows import MAX_JOB_ID as MAX_ROWID
from bot.storage.job_rows import UNFINISHED as _UNFINISHED
from bot.storage.job_rows import job_from_row as _job_from_row
from bot.storage.job_transitions import Increment, JobTransitions, KeepPredictTime

Clock = Callable[[], float]


class SQLiteJobRecords(JobTransitions):
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

    async def confirm_lease(self, job_id: int) -> None:
        """Nothing to check: a SQLite file is one process's (bot/storage/process_lock.py)."""

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
            if not isinstance(value, Increment | KeepPredictTime)
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
    if isinstance(value, Increment):
        return f"{name} = {name} + 1"
    if isinstance(value, KeepPredictTime):
        return f"{name} = {name} + COALESCE(predict_time, 0)"
    return f"{name} = ?"
