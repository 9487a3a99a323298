"""The SQLite store: one file holding jobs, server settings, bans, usage and timings."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import aiosqlite

from bot.core.eta import Timing
from bot.storage.base import GpuSeconds, SchemaTooNew
from bot.storage.job_rows import BILLED, GPU_SECONDS, SPLIT_GPU_SECONDS
from bot.storage.sqlite_jobs import Clock, SQLiteJobRecords
from bot.storage.sqlite_migrations import MIGRATIONS

log = logging.getLogger(__name__)
aiosqlite_log = logging.getLogger("aiosqlite")

TIMINGS_KEPT = 100  # per model and step count; estimates read far fewer
# How long a write probe waits for the write lock: the bot's own writes hold it for
# milliseconds, and the health check gives the whole probe 5 seconds.
PROBE_BUSY_TIMEOUT = 1.0


class SQLiteStore(SQLiteJobRecords):
    """The Store on one SQLite file (WAL), migrated on open; all SQL lives here, parameterised."""

    def __init__(self, db: aiosqlite.Connection, path: Path, *, clock: Clock = time.time) -> None:
        super().__init__(db, clock=clock)
        self._path = path

    @classmethod
    async def open(cls, path: str | Path, *, clock: Clock = time.time) -> SQLiteStore:
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
            store = cls(db, path, clock=clock)
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
        # Its own connection, in a thread that always finishes and closes it: on the shared
        # one a job's write landing between BEGIN and ROLLBACK would be rolled back with the
        # probe, and a probe cancelled by the health check's time-out would leave the shared
        # connection inside a transaction that never commits.
        await asyncio.to_thread(_probe_write, self._path)

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

    async def gpu_seconds_since(self, guild_id: int, since: float) -> GpuSeconds:
        """Sum the GPU seconds of a server's requests made since `since`, per backend kind."""
        async with self._db.execute(
            f"SELECT {SPLIT_GPU_SECONDS} FROM jobs WHERE guild_id = ? AND created_at >= ?",
            (guild_id, since),
        ) as cursor:
            row = await cursor.fetchone()
        return GpuSeconds(float(row[0]), float(row[1])) if row else GpuSeconds()

    async def usage_by_day(self, guild_id: int, since: float) -> list[tuple[int, int, GpuSeconds]]:
        """Return (UTC day number, predictions, GPU seconds) per day since `since`."""
        async with self._db.execute(
            "SELECT CAST(created_at / 86400 AS INTEGER) AS day, COUNT(*), "
            f"{SPLIT_GPU_SECONDS} FROM jobs WHERE guild_id = ? AND created_at >= ? AND {BILLED} "
            "GROUP BY day ORDER BY day",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(d), int(n), GpuSeconds(float(r), float(o))) for d, n, r, o in rows]

    async def usage_by_member(
        self, guild_id: int, since: float
    ) -> list[tuple[int, int, GpuSeconds]]:
        """Return (member id, predictions, GPU seconds) since `since`, most GPU seconds first."""
        async with self._db.execute(
            f"SELECT requester_id, COUNT(*), {SPLIT_GPU_SECONDS} FROM jobs "
            f"WHERE guild_id = ? AND created_at >= ? AND {BILLED} "
            f"GROUP BY requester_id ORDER BY SUM({GPU_SECONDS}) DESC, requester_id",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(m), int(n), GpuSeconds(float(r), float(o))) for m, n, r, o in rows]


def _probe_write(path: Path) -> None:
    """Take the write lock on `path`, insert a row and roll it back, on a connection of its own."""
    db = sqlite3.connect(path, timeout=PROBE_BUSY_TIMEOUT, isolation_level=None)
    try:
        # IMMEDIATE takes the write lock up front, so a read-only file or folder fails here.
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO timings (model, steps, queue_wait, run_time, recorded_at) "
                "VALUES ('probe', 0, 0, 0, 0)"
            )
        finally:
            db.execute("ROLLBACK")
    finally:
        db.close()
