"""A process's membership of a shared PostgreSQL store, on a connection of its own.

That connection holds the process's shard locks (session advisory locks, which the server
drops when the process dies, kill -9 included) and LISTENs for the other processes' events.
If it is lost (the database restarted), the next heartbeat connects again, listens again and
takes the shard locks back; events sent meanwhile are caught by the lease renewals' polling.
The `bot_processes` rows say who lives, for sharing the budgets and the running total.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from bot.storage.base import StorageUnavailable
from bot.storage.leases import ShardsTaken
from bot.storage.postgres_jobs import UNAVAILABLE_ERRORS, describe

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
COMMAND_TIMEOUT_SECONDS = 10.0
FORGET_PROCESSES_AFTER_DAYS = 1  # rows of processes long gone are removed

PayloadHandler = Callable[[str], Awaitable[None] | None]


def new_owner() -> str:
    """A name for this process's leases, unique across machines and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PostgresMembership:
    """Shard locks, events and liveness of one process; `join` connects it."""

    def __init__(self, url: str, *, lease_seconds: float, owner: str | None = None) -> None:
        self._url = url
        self.lease_seconds = lease_seconds
        self.owner = owner or new_owner()
        self.channel = "animate_events"
        self._connection: asyncpg.Connection | None = None
        self._handlers: list[PayloadHandler] = []
        self._shards: tuple[int | None, tuple[int, ...]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # One query at a time on the connection (asyncpg refuses two).
        self._lock = asyncio.Lock()

    async def join(self) -> None:
        """Connect, learn the schema's event channel and listen; raise StorageUnavailable."""
        connection = await self._connect()
        try:
            schema = await connection.fetchval("SELECT current_schema()")
            # Stores in other schemas of one database (the tests') must not hear each other.
            self.channel = f"animate_events_{schema}"[:63]
            await connection.add_listener(self.channel, self._heard)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                await connection.close()
            raise StorageUnavailable(f"PostgreSQL did not answer ({describe(exc)})") from exc
        self._connection = connection

    async def take_shards(self, shard_count: int, shard_ids: Sequence[int]) -> None:
        """Lock the shards this process runs; raise ShardsTaken if another live process has one."""
        try:
            async with self._lock:
                await self._take_shards(self._require(), shard_count, shard_ids)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            raise StorageUnavailable(f"PostgreSQL did not answer ({describe(exc)})") from exc
        self._shards = (shard_count, tuple(shard_ids))

    async def _take_shards(
        self, connection: asyncpg.Connection, shard_count: int, shard_ids: Sequence[int]
    ) -> None:
        """Lock each shard in turn, letting go of all of them if one is taken."""
        taken: list[int] = []
        for shard_id in shard_ids:
            if not await connection.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended("
                "current_schema() || ' shard ' || $1::integer || ' of ' || $2::integer, 0))",
                shard_id,
                shard_count,
            ):
                for held in taken:
                    await self._unlock_shard(connection, held, shard_count)
                raise ShardsTaken(
                    f"another animate-bot process already runs shard {shard_id} of "
                    f"{shard_count} on this database; give each process its own SHARD_IDS"
                )
            taken.append(shard_id)

    def listen(self, handler: PayloadHandler) -> None:
        """Call `handler` with the payload of every event on the channel."""
        self._handlers.append(handler)

    async def beat(self) -> int:
        """Say this process lives (reconnecting if needed); return how many processes live."""
        if self._connection is None or self._connection.is_closed():
            await self._rejoin()
        count, ids = self._shards or (None, ())
        try:
            async with self._lock:
                live = await self._require().fetchval(
                    "WITH me AS (INSERT INTO bot_processes (owner, shard_count, shard_ids, "
                    "seen_at) VALUES ($1, $2, $3, now()) ON CONFLICT (owner) DO UPDATE SET "
                    "shard_count = excluded.shard_count, shard_ids = excluded.shard_ids, "
                    "seen_at = now() RETURNING owner) "
                    # Seen within two renewals (every third of a lease): alive.
                    "SELECT 1 + count(*) FROM bot_processes WHERE owner <> $1 "
                    "AND seen_at > now() - make_interval(secs => $4 * 2 / 3)",
                    self.owner,
                    count,
                    list(ids),
                    self.lease_seconds,
                )
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            raise StorageUnavailable(f"PostgreSQL did not answer ({describe(exc)})") from exc
        return int(live or 1)

    async def reserve_identify(self, bucket: int, interval: float) -> float:
        """Book the bucket's next identify slot; return the seconds to wait until it."""
        async with self._lock:
            wait = await self._require().fetchval(
                "INSERT INTO identify_buckets AS b (bucket, next_at) "
                "VALUES ($1, now() + make_interval(secs => $2)) ON CONFLICT (bucket) DO UPDATE SET "
                "next_at = GREATEST(b.next_at, now()) + make_interval(secs => $2) "
                "RETURNING EXTRACT(EPOCH FROM b.next_at - now())::float8 - $2",
                bucket,
                interval,
            )
        return max(0.0, float(wait or 0.0))

    async def leave(self) -> None:
        """Forget this process's row and close the connection (its locks go with it)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            await connection.execute(
                "DELETE FROM bot_processes WHERE owner = $1 "
                "OR seen_at < now() - make_interval(days => $2)",
                self.owner,
                FORGET_PROCESSES_AFTER_DAYS,
            )
        with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
            await connection.close()
        for task in self._tasks:
            task.cancel()

    async def _rejoin(self) -> None:
        """Connect again after the connection was lost, and take the shard locks back."""
        log.warning("the connection to PostgreSQL that holds this process's shards was lost")
        await self.join()
        if self._shards is not None:
            count, ids = self._shards
            try:
                await self.take_shards(count or 1, ids)
            except ShardsTaken as exc:
                # Another process started on these shards while the database was away: both
                # now run them. Leases still keep each job to one process.
                log.error("could not take the shards back: %s", exc)

    async def _connect(self) -> asyncpg.Connection:
        """Open the membership connection; raise StorageUnavailable if the server is away."""
        try:
            # A server gone silent must not hold a heartbeat (and so every renewal) forever.
            return await asyncpg.connect(
                self._url, timeout=CONNECT_TIMEOUT_SECONDS, command_timeout=COMMAND_TIMEOUT_SECONDS
            )
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            raise StorageUnavailable(f"PostgreSQL did not answer ({describe(exc)})") from exc

    async def _unlock_shard(
        self, connection: asyncpg.Connection, shard_id: int, count: int
    ) -> None:
        """Let go of one shard lock."""
        await connection.fetchval(
            "SELECT pg_advisory_unlock(hashtextextended("
            "current_schema() || ' shard ' || $1::integer || ' of ' || $2::integer, 0))",
            shard_id,
            count,
        )

    def _heard(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        """Hand a NOTIFY payload to every handler (an async one runs as a task)."""
        for handler in self._handlers:
            try:
                result = handler(str(payload))
            except Exception:
                log.exception("an event handler failed")
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        """Forget a finished handler task, logging its failure."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("an event handler failed", exc_info=task.exception())

    def _require(self) -> asyncpg.Connection:
        """The connection, which `join` must have made."""
        if self._connection is None:
            raise StorageUnavailable("PostgreSQL did not answer (not connected)")
        return self._connection
