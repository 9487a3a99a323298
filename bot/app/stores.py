"""Which store the bot runs on: SQLite at DATABASE_PATH, or PostgreSQL at DATABASE_URL."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import asyncpg

from bot.app.settings import Settings
from bot.core import redaction
from bot.storage.base import SchemaTooNew, StorageUnavailable, Store
from bot.storage.postgres import PostgresStore, create_pool, server_name
from bot.storage.postgres_leases import PostgresLeases
from bot.storage.postgres_membership import PostgresMembership
from bot.storage.process_lock import ProcessLock, SQLiteProcessLock, StoreInUse
from bot.storage.sqlite import SQLiteStore

# A SQLite file is one process's: every process resumes every job it finds there.
ONE_PROCESS = "; one process per SQLite file (share a PostgreSQL DATABASE_URL to run several)"


class StoreOpenFailed(Exception):
    """The store could not be opened at start; the message is one line for the operator."""


@dataclass
class OpenedStore:
    """The store the bot runs on, the PostgreSQL pool under it (None on SQLite), and either
    the lock that keeps other processes off a SQLite file or the jobs PostgreSQL shares
    between processes (`shared`, with this process's membership of the store).

    The pool is made once, here, so that whatever else needs the database shares it.
    """

    store: Store
    pool: asyncpg.Pool | None = None
    lock: ProcessLock | None = None
    shared: PostgresLeases | None = None
    membership: PostgresMembership | None = None

    async def close(self) -> None:
        """Close the store, then its pool, then let another process take it."""
        try:
            if self.membership is not None:
                await self.membership.leave()
            await self.store.close()
            if self.pool is not None:
                await self.pool.close()
        finally:
            if self.lock is not None:
                await self.lock.release()


async def open_store(settings: Settings) -> OpenedStore:
    """Lock, open and migrate the configured store; raise StoreOpenFailed with one clear line."""
    if settings.database_url is None:
        try:
            lock = SQLiteProcessLock.take(settings.database_path)
        except StoreInUse as exc:
            raise StoreOpenFailed(f"{exc}{ONE_PROCESS}") from None
        except OSError as exc:
            raise StoreOpenFailed(
                f"cannot lock {settings.database_path} ({exc}); check DATABASE_PATH"
            ) from None
        try:
            return OpenedStore(await _open_sqlite(settings), lock=lock)
        except BaseException:
            await lock.release()
            raise
    url = settings.database_url.get_secret_value()
    opened = await _open_postgres(url)
    membership = PostgresMembership(url, lease_seconds=settings.job_lease_seconds)
    try:
        await membership.join()
    except StorageUnavailable as exc:
        await opened.close()
        raise StoreOpenFailed(f"{exc}; check DATABASE_URL and that the server runs") from None
    assert isinstance(opened.store, PostgresStore)
    opened.membership = membership
    opened.shared = PostgresLeases(
        opened.store, membership, lease_seconds=settings.job_lease_seconds
    )
    return opened


async def _open_postgres(url: str) -> OpenedStore:
    """Connect the pool, then open and migrate the PostgreSQL store on it."""
    where = f"PostgreSQL at {server_name(url)}"
    try:
        pool = await create_pool(url)
    except StorageUnavailable as exc:
        raise StoreOpenFailed(f"{exc}; check DATABASE_URL and that the server runs") from None
    try:
        store = await PostgresStore.open(pool)
    except BaseException as exc:
        await pool.close()
        if isinstance(exc, SchemaTooNew):
            raise StoreOpenFailed(f"{where}: {exc}") from None
        if isinstance(exc, StorageUnavailable | asyncpg.PostgresError):
            raise StoreOpenFailed(
                redaction.redact(f"{where} could not set up the schema ({exc}); check DATABASE_URL")
            ) from None
        raise
    return OpenedStore(store, pool)


async def _open_sqlite(settings: Settings) -> SQLiteStore:
    """Open (creating) and migrate the SQLite file at DATABASE_PATH."""
    path = settings.database_path
    try:
        return await SQLiteStore.open(path)
    except SchemaTooNew as exc:
        raise StoreOpenFailed(f"{path}: {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        raise StoreOpenFailed(
            f"cannot open or create {path} ({exc}); check DATABASE_PATH"
        ) from None
