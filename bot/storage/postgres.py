"""The PostgreSQL store: the same records as SQLite, shared by every process on one server.

One asyncpg pool is made at start (`create_pool`) and handed to the store, so that later
parts (leases, notifications) share its connections. The schema lives in the pool's
`search_path` (a `?search_path=...` in DATABASE_URL picks another schema than `public`).
"""

from __future__ import annotations

import logging
import time

import asyncpg
import yarl
from asyncpg.pool import PoolConnectionProxy

from bot.core.eta import Timing
from bot.storage.base import GpuSeconds, SchemaTooNew, StorageUnavailable
from bot.storage.job_rows import BILLED, GPU_SECONDS, SPLIT_GPU_SECONDS
from bot.storage.postgres_jobs import (
    UNAVAILABLE_ERRORS,
    Clock,
    PostgresJobRecords,
    describe,
    storable,
)
from bot.storage.postgres_migrations import MIGRATIONS

log = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql", "postgres")
TIMINGS_KEPT = 100  # per model and step count; estimates read far fewer
CONNECT_TIMEOUT_SECONDS = 10.0
COMMAND_TIMEOUT_SECONDS = 30.0
POOL_SIZE = 10
# Two processes starting at once must not both migrate: the first holds this lock (taken per
# schema, inside each migration's transaction) and the second then finds nothing to do.
MIGRATION_LOCK_CLASS = 0x616E696D


def url_problem(url: str) -> str | None:
    """Why `url` is not a PostgreSQL connection URL, or None if it is one."""
    try:
        parsed = yarl.URL(url)
        parsed.explicit_port  # noqa: B018 -- a port that is not a number raises here
    except ValueError:
        return "is not a URL; expected postgresql://user:password@host:port/database"
    if parsed.scheme not in POSTGRES_SCHEMES:
        return "must start with postgresql:// or postgres:// (empty: SQLite at DATABASE_PATH)"
    if not parsed.path.strip("/") and not parsed.query.get("dbname"):
        return "names no database; expected postgresql://user:password@host:port/database"
    return None


def server_name(url: str) -> str:
    """Where a DATABASE_URL points, as `host:port/database`, without any password."""
    parsed = yarl.URL(url)
    where = f"{parsed.host or 'localhost'}:{parsed.explicit_port or 5432}"
    database = parsed.path.lstrip("/")
    return f"{where}/{database}" if database else where


async def create_pool(url: str, *, size: int = POOL_SIZE) -> asyncpg.Pool:
    """Connect the pool every store and later part shares; raise StorageUnavailable if not."""
    # No floor of idle connections: asyncpg would keep redialling a server that is down in
    # the background, logging a traceback each time; connections are made when needed.
    pool = asyncpg.create_pool(
        url,
        min_size=0,
        max_size=size,
        timeout=CONNECT_TIMEOUT_SECONDS,
        # A server gone silent (no reset, no close) would hold a call until TCP gives up; a
        # timed-out write that did commit is read back by the job's retry (store_outage).
        command_timeout=COMMAND_TIMEOUT_SECONDS,
    )
    try:
        await pool
        async with pool.acquire(timeout=CONNECT_TIMEOUT_SECONDS):
            pass  # the server answers and takes the login
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        await pool.close()
        raise StorageUnavailable(
            f"could not connect to PostgreSQL at {server_name(url)} ({describe(exc)})"
        ) from None
    return pool


class PostgresStore(PostgresJobRecords):
    """The Store on a PostgreSQL pool, migrated on open; all SQL lives here, parameterised."""

    @classmethod
    async def open(cls, pool: asyncpg.Pool, *, clock: Clock = time.time) -> PostgresStore:
        """Migrate the pool's schema and return the store on it (the pool stays the caller's)."""
        store = cls(pool, clock=clock)
        await store._migrate()
        return store

    async def close(self) -> None:
        """Nothing to close: the pool belongs to whoever created it, and outlives the store."""

    async def schema_version(self) -> int:
        """Return the migration level of the schema (0 before the first migration)."""
        async with self._connection() as connection:
            return await _version(connection)

    async def probe_write(self) -> None:
        """Write a row inside a transaction and roll it back; raise if the server takes none."""
        async with self._connection() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                await connection.execute(
                    "INSERT INTO timings (model, steps, queue_wait, run_time, recorded_at) "
                    "VALUES ('probe', 0, 0, 0, 0)"
                )
            finally:
                await transaction.rollback()

    async def _migrate(self) -> None:
        """Apply every migration newer than the schema, each in its own transaction."""
        async with self._connection() as connection:
            while True:
                async with connection.transaction():
                    await connection.execute(
                        "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
                        MIGRATION_LOCK_CLASS,
                    )
                    await connection.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
                    )
                    current = await _version(connection)
                    if current > len(MIGRATIONS):
                        raise SchemaTooNew(
                            f"The database is at schema version {current}, newer than this "
                            f"bot ({len(MIGRATIONS)}); upgrade the bot."
                        )
                    if current == len(MIGRATIONS):
                        return
                    log.info("applying database migration %d", current + 1)
                    await connection.execute(MIGRATIONS[current])
                    await connection.execute("DELETE FROM schema_version")
                    await connection.execute(
                        "INSERT INTO schema_version (version) VALUES ($1)", current + 1
                    )

    async def record_timing(self, timing: Timing) -> None:
        """Store a measured prediction, dropping the oldest beyond TIMINGS_KEPT for its key."""
        async with self._connection() as connection, connection.transaction():
            key = storable((timing.model, timing.steps))
            await connection.execute(
                "INSERT INTO timings (model, steps, queue_wait, run_time, recorded_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                *key,
                timing.queue_wait,
                timing.run_time,
                self._clock(),
            )
            await connection.execute(
                "DELETE FROM timings WHERE model = $1 AND steps = $2 AND id NOT IN "
                "(SELECT id FROM timings WHERE model = $1 AND steps = $2 "
                "ORDER BY id DESC LIMIT $3)",
                *key,
                TIMINGS_KEPT,
            )

    async def recent_timings(self, per_key: int) -> list[Timing]:
        """Return the newest `per_key` timings of each model and step count, oldest first."""
        rows = await self._fetch(
            "SELECT model, steps, queue_wait, run_time FROM ("
            "SELECT *, ROW_NUMBER() OVER (PARTITION BY model, steps ORDER BY id DESC) AS newer "
            "FROM timings) AS ranked WHERE newer <= $1 ORDER BY id",
            per_key,
        )
        return [Timing(str(m), int(s), float(q), float(r)) for m, s, q, r in rows]

    async def guild_settings(self) -> list[tuple[int, str, str]]:
        """Return every stored server setting as (guild id, name, JSON value)."""
        rows = await self._fetch(
            "SELECT guild_id, name, value_json FROM guild_settings ORDER BY guild_id, name"
        )
        return [(int(g), str(n), str(v)) for g, n, v in rows]

    async def put_guild_setting(
        self, guild_id: int, name: str, value_json: str, *, updated_by: int
    ) -> None:
        """Store one server setting, replacing its previous value."""
        await self._execute(
            "INSERT INTO guild_settings (guild_id, name, value_json, updated_by, updated_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (guild_id, name) DO UPDATE SET "
            "value_json = excluded.value_json, updated_by = excluded.updated_by, "
            "updated_at = excluded.updated_at",
            guild_id,
            name,
            value_json,
            updated_by,
            self._clock(),
        )

    async def delete_guild_setting(self, guild_id: int, name: str) -> None:
        """Forget one server setting, so the default applies again."""
        await self._execute(
            "DELETE FROM guild_settings WHERE guild_id = $1 AND name = $2", guild_id, name
        )

    async def ban(self, guild_id: int, user_id: int, *, banned_by: int) -> bool:
        """Ban a member from the bot in a server; False if they already were."""
        row = await self._fetchrow(
            "INSERT INTO guild_bans (guild_id, user_id, banned_by, created_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (guild_id, user_id) DO NOTHING RETURNING 1",
            guild_id,
            user_id,
            banned_by,
            self._clock(),
        )
        return row is not None

    async def unban(self, guild_id: int, user_id: int) -> bool:
        """Lift a ban; False if the member was not banned."""
        row = await self._fetchrow(
            "DELETE FROM guild_bans WHERE guild_id = $1 AND user_id = $2 RETURNING 1",
            guild_id,
            user_id,
        )
        return row is not None

    async def is_banned(self, guild_id: int, user_id: int) -> bool:
        """True if the member is banned from the bot in the server."""
        row = await self._fetchrow(
            "SELECT 1 FROM guild_bans WHERE guild_id = $1 AND user_id = $2", guild_id, user_id
        )
        return row is not None

    async def requests_since(self, guild_id: int, requester_id: int, since: float) -> int:
        """Count a member's requests in a server made since `since`, except ones never sent."""
        row = await self._fetchrow(
            "SELECT COUNT(*) FROM jobs WHERE guild_id = $1 AND requester_id = $2 "
            "AND created_at >= $3 "
            "AND NOT (status IN ('canceled', 'failed') AND submitted_at IS NULL)",
            guild_id,
            requester_id,
            since,
        )
        return int(row[0]) if row else 0

    async def gpu_seconds_since(self, guild_id: int, since: float) -> GpuSeconds:
        """Sum the GPU seconds of a server's requests made since `since`, per backend kind."""
        row = await self._fetchrow(
            f"SELECT {SPLIT_GPU_SECONDS} FROM jobs WHERE guild_id = $1 AND created_at >= $2",
            guild_id,
            since,
        )
        return GpuSeconds(float(row[0]), float(row[1])) if row else GpuSeconds()

    async def usage_by_day(self, guild_id: int, since: float) -> list[tuple[int, int, GpuSeconds]]:
        """Return (UTC day number, predictions, GPU seconds) per day since `since`."""
        rows = await self._fetch(
            "SELECT FLOOR(created_at / 86400)::bigint AS day, COUNT(*), "
            f"{SPLIT_GPU_SECONDS} FROM jobs WHERE guild_id = $1 AND created_at >= $2 "
            f"AND {BILLED} GROUP BY day ORDER BY day",
            guild_id,
            since,
        )
        return [(int(d), int(n), GpuSeconds(float(r), float(o))) for d, n, r, o in rows]

    async def usage_by_member(
        self, guild_id: int, since: float
    ) -> list[tuple[int, int, GpuSeconds]]:
        """Return (member id, predictions, GPU seconds) since `since`, most GPU seconds first."""
        rows = await self._fetch(
            f"SELECT requester_id, COUNT(*), {SPLIT_GPU_SECONDS} FROM jobs "
            f"WHERE guild_id = $1 AND created_at >= $2 AND {BILLED} "
            f"GROUP BY requester_id ORDER BY SUM({GPU_SECONDS}) DESC, requester_id",
            guild_id,
            since,
        )
        return [(int(m), int(n), GpuSeconds(float(r), float(o))) for m, n, r, o in rows]


async def _version(connection: PoolConnectionProxy) -> int:
    """The schema's migration level, read on a connection (0 if it was never migrated)."""
    exists = await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    version = await connection.fetchval("SELECT MAX(version) FROM schema_version")
    return int(version or 0)
