"""The job store: every job and every change of its state, in SQLite."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from bot.eta import Timing
from bot.jobs import GenerationRequest, Job, JobStatus
from bot.redaction import redact

log = logging.getLogger(__name__)
aiosqlite_log = logging.getLogger("aiosqlite")

Clock = Callable[[], float]

# Numbered migrations: entry N moves the schema from user_version N to N + 1. Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        guild_id           INTEGER NOT NULL,
        channel_id         INTEGER NOT NULL,
        requester_id       INTEGER NOT NULL,
        request_message_id INTEGER,
        input_json         TEXT    NOT NULL,
        seed               INTEGER NOT NULL,
        status             TEXT    NOT NULL CHECK (status IN
            ('queued', 'submitted', 'running', 'delivering', 'done', 'failed', 'canceled')),
        prediction_id      TEXT,
        result_message_id  INTEGER,
        error              TEXT,
        parent_job_id      INTEGER REFERENCES jobs (id),
        predict_time       REAL,
        deleted            INTEGER NOT NULL DEFAULT 0,
        created_at         REAL    NOT NULL,
        updated_at         REAL    NOT NULL,
        submitted_at       REAL,
        started_at         REAL,
        completed_at       REAL
    );
    CREATE INDEX jobs_unfinished ON jobs (status, id)
        WHERE status NOT IN ('done', 'failed', 'canceled');
    CREATE UNIQUE INDEX jobs_prediction ON jobs (prediction_id) WHERE prediction_id IS NOT NULL;
    """,
    # 2: how many times the prediction was made again because its output had expired.
    """
    ALTER TABLE jobs ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: how the result is posted, the upload limit Discord gave, the version that made it.
    """
    ALTER TABLE jobs ADD COLUMN output_format TEXT NOT NULL DEFAULT 'mp4';
    ALTER TABLE jobs ADD COLUMN upload_limit INTEGER;
    ALTER TABLE jobs ADD COLUMN model_version TEXT;
    """,
    # 4: the measured queue wait and run time of each succeeded prediction, for estimates.
    """
    CREATE TABLE timings (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        model       TEXT    NOT NULL,
        steps       INTEGER NOT NULL,
        queue_wait  REAL    NOT NULL,
        run_time    REAL    NOT NULL,
        recorded_at REAL    NOT NULL
    );
    CREATE INDEX timings_key ON timings (model, steps, id);
    """,
    # 5: each server's own settings (only those changed from the defaults), members banned
    # from the bot, and the GPU time of runs whose output expired and was made again.
    """
    CREATE TABLE guild_settings (
        guild_id   INTEGER NOT NULL,
        name       TEXT    NOT NULL,
        value_json TEXT    NOT NULL,
        updated_by INTEGER NOT NULL,
        updated_at REAL    NOT NULL,
        PRIMARY KEY (guild_id, name)
    );
    CREATE TABLE guild_bans (
        guild_id   INTEGER NOT NULL,
        user_id    INTEGER NOT NULL,
        banned_by  INTEGER NOT NULL,
        created_at REAL    NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );
    ALTER TABLE jobs ADD COLUMN earlier_predict_time REAL NOT NULL DEFAULT 0;
    CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
    CREATE INDEX jobs_requester ON jobs (guild_id, requester_id, id);
    """,
    # 6: the interaction's token, until the status message id is stored or the job ends, so
    # that a restart can edit the original response instead of posting a second message.
    """
    ALTER TABLE jobs ADD COLUMN interaction_token TEXT;
    """,
)

_COLUMNS = (
    "id, guild_id, channel_id, requester_id, request_message_id, input_json, status, "
    "prediction_id, result_message_id, error, parent_job_id, predict_time, deleted, "
    "created_at, updated_at, submitted_at, started_at, completed_at, reruns, output_format, "
    "upload_limit, model_version, interaction_token"
)
_MAX_ROWID = 2**63 - 1
TIMINGS_KEPT = 100  # per model and step count; estimates read far fewer
_UNFINISHED = tuple(s.value for s in JobStatus if not s.is_final)
# GPU seconds of a job: its last run, plus runs made again after their output expired.
_GPU_SECONDS = "COALESCE(predict_time, 0) + earlier_predict_time"
_BILLED = "(predict_time IS NOT NULL OR earlier_predict_time > 0)"


class _Increment:
    """A column change that adds one to the stored value."""


class _KeepPredictTime:
    """A column change that adds the stored predict_time (the GPU time already paid for)."""


class SchemaTooNew(RuntimeError):
    """The file was migrated by a newer bot; this one must not read or write it."""


class InvalidTransition(Exception):
    """A job was not in a state that allows the requested change (someone else moved it)."""


class JobStore:
    """A small facade over the SQLite file; all SQL lives here, parameterised."""

    def __init__(self, db: aiosqlite.Connection, *, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    @classmethod
    async def open(cls, path: str | Path, *, clock: Clock = time.time) -> JobStore:
        """Open (creating folder and file as needed) and migrate the database."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        # At DEBUG aiosqlite logs every statement with its parameters: members' prompts and
        # the interaction tokens (credentials). Its lines add nothing to the store's own.
        if aiosqlite_log.getEffectiveLevel() < logging.INFO:
            aiosqlite_log.setLevel(logging.INFO)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA busy_timeout = 5000")
            store = cls(db, clock=clock)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    async def schema_version(self) -> int:
        """Return the migration level of the file."""
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def probe_write(self) -> None:
        """Write a row inside a transaction and roll it back; raise if the file is not writable."""
        # IMMEDIATE takes the write lock up front, so a read-only file or folder fails here.
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute(
                "INSERT INTO timings (model, steps, queue_wait, run_time, recorded_at) "
                "VALUES ('probe', 0, 0, 0, 0)"
            )
        finally:
            await self._db.execute("ROLLBACK")

    async def _migrate(self) -> None:
        """Apply every migration newer than the file, each in its own transaction."""
        current = await self.schema_version()
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"The database is at schema version {current}, newer than this bot "
                f"({len(MIGRATIONS)}); upgrade the bot."
            )
        for number in range(current, len(MIGRATIONS)):
            log.info("applying database migration %d", number + 1)
            # executescript commits first, so wrap the step and its version bump together.
            await self._db.executescript(
                f"BEGIN;\n{MIGRATIONS[number]}\nPRAGMA user_version = {number + 1};\nCOMMIT;"
            )

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
        if not 0 < job_id <= _MAX_ROWID:
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
            error=redact(error),
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
            error=None if reason is None else redact(reason),
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

    async def record_timing(self, timing: Timing) -> None:
        """Store a measured prediction, dropping the oldest beyond TIMINGS_KEPT for its key."""
        await self._db.execute(
            "INSERT INTO timings (model, steps, queue_wait, run_time, recorded_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (timing.model, timing.steps, timing.queue_wait, timing.run_time, self._clock()),
        )
        await self._db.execute(
            "DELETE FROM timings WHERE model = ? AND steps = ? AND id NOT IN "
            "(SELECT id FROM timings WHERE model = ? AND steps = ? ORDER BY id DESC LIMIT ?)",
            (timing.model, timing.steps, timing.model, timing.steps, TIMINGS_KEPT),
        )

    async def recent_timings(self, per_key: int) -> list[Timing]:
        """Return the newest `per_key` timings of each model and step count, oldest first."""
        async with self._db.execute(
            "SELECT model, steps, queue_wait, run_time FROM ("
            "SELECT *, ROW_NUMBER() OVER (PARTITION BY model, steps ORDER BY id DESC) AS newer "
            "FROM timings) WHERE newer <= ? ORDER BY id",
            (per_key,),
        ) as cursor:
            rows = await cursor.fetchall()
        return [Timing(str(m), int(s), float(q), float(r)) for m, s, q, r in rows]

    # Server settings and bans ----------------------------------------------------------

    async def guild_settings(self) -> list[tuple[int, str, str]]:
        """Return every stored server setting as (guild id, name, JSON value)."""
        async with self._db.execute(
            "SELECT guild_id, name, value_json FROM guild_settings ORDER BY guild_id, name"
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(g), str(n), str(v)) for g, n, v in rows]

    async def put_guild_setting(
        self, guild_id: int, name: str, value_json: str, *, updated_by: int
    ) -> None:
        """Store one server setting, replacing its previous value."""
        await self._db.execute(
            "INSERT INTO guild_settings (guild_id, name, value_json, updated_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, name) DO UPDATE SET "
            "value_json = excluded.value_json, updated_by = excluded.updated_by, "
            "updated_at = excluded.updated_at",
            (guild_id, name, value_json, updated_by, self._clock()),
        )

    async def delete_guild_setting(self, guild_id: int, name: str) -> None:
        """Forget one server setting, so the default applies again."""
        await self._db.execute(
            "DELETE FROM guild_settings WHERE guild_id = ? AND name = ?", (guild_id, name)
        )

    async def ban(self, guild_id: int, user_id: int, *, banned_by: int) -> bool:
        """Ban a member from the bot in a server; False if they already were."""
        cursor = await self._db.execute(
            "INSERT INTO guild_bans (guild_id, user_id, banned_by, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, user_id) DO NOTHING",
            (guild_id, user_id, banned_by, self._clock()),
        )
        changed = cursor.rowcount > 0
        await cursor.close()
        return changed

    async def unban(self, guild_id: int, user_id: int) -> bool:
        """Lift a ban; False if the member was not banned."""
        cursor = await self._db.execute(
            "DELETE FROM guild_bans WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        changed = cursor.rowcount > 0
        await cursor.close()
        return changed

    async def is_banned(self, guild_id: int, user_id: int) -> bool:
        """True if the member is banned from the bot in the server."""
        async with self._db.execute(
            "SELECT 1 FROM guild_bans WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        ) as cursor:
            return await cursor.fetchone() is not None

    # Usage ------------------------------------------------------------------------------

    async def requests_since(self, guild_id: int, requester_id: int, since: float) -> int:
        """Count a member's requests in a server made since `since`, except ones never sent."""
        async with self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND requester_id = ? "
            "AND created_at >= ? "
            "AND NOT (status IN ('canceled', 'failed') AND submitted_at IS NULL)",
            (guild_id, requester_id, since),
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def gpu_seconds_since(self, guild_id: int, since: float) -> float:
        """Sum the GPU seconds of a server's requests made since `since`."""
        async with self._db.execute(
            f"SELECT COALESCE(SUM({_GPU_SECONDS}), 0) FROM jobs "
            "WHERE guild_id = ? AND created_at >= ?",
            (guild_id, since),
        ) as cursor:
            row = await cursor.fetchone()
        return float(row[0]) if row else 0.0

    async def usage_by_day(self, guild_id: int, since: float) -> list[tuple[int, int, float]]:
        """Return (UTC day number, predictions, GPU seconds) per day since `since`."""
        async with self._db.execute(
            f"SELECT CAST(created_at / 86400 AS INTEGER) AS day, COUNT(*), SUM({_GPU_SECONDS}) "
            f"FROM jobs WHERE guild_id = ? AND created_at >= ? AND {_BILLED} "
            "GROUP BY day ORDER BY day",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(d), int(n), float(g)) for d, n, g in rows]

    async def usage_by_member(self, guild_id: int, since: float) -> list[tuple[int, int, float]]:
        """Return (member id, predictions, GPU seconds) since `since`, biggest spender first."""
        async with self._db.execute(
            f"SELECT requester_id, COUNT(*), SUM({_GPU_SECONDS}) AS gpu FROM jobs "
            f"WHERE guild_id = ? AND created_at >= ? AND {_BILLED} "
            "GROUP BY requester_id ORDER BY gpu DESC, requester_id",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(m), int(n), float(g)) for m, n, g in rows]

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
            bound = _MAX_ROWID if before_id is None else before_id
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


def _job_from_row(row: Sequence[Any]) -> Job:
    """Build a Job from a row in `_COLUMNS` order."""
    (
        job_id,
        guild_id,
        channel_id,
        requester_id,
        request_message_id,
        input_json,
        status,
        prediction_id,
        result_message_id,
        error,
        parent_job_id,
        predict_time,
        deleted,
        created_at,
        updated_at,
        submitted_at,
        started_at,
        completed_at,
        reruns,
        output_format,
        upload_limit,
        model_version,
        interaction_token,
    ) = row
    return Job(
        id=job_id,
        guild_id=guild_id,
        channel_id=channel_id,
        requester_id=requester_id,
        request=GenerationRequest.from_json(input_json, output_format=output_format),
        status=JobStatus(status),
        created_at=created_at,
        updated_at=updated_at,
        request_message_id=request_message_id,
        prediction_id=prediction_id,
        result_message_id=result_message_id,
        error=error,
        parent_job_id=parent_job_id,
        submitted_at=submitted_at,
        started_at=started_at,
        completed_at=completed_at,
        predict_time=predict_time,
        deleted=bool(deleted),
        reruns=reruns,
        upload_limit=upload_limit,
        model_version=model_version,
        interaction_token=interaction_token,
    )
