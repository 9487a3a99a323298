"""What only the PostgreSQL store does: its migrations, its twin schema, a server that goes away.

Behaviour every store must have is in tests/test_store_contract.py, which runs on PostgreSQL
too. These tests run on a schema of their own on a real server (tests/postgres_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import yarl

from bot.core.jobs import GenerationRequest
from bot.storage import postgres_migrations, sqlite_migrations
from bot.storage.base import SchemaTooNew, StorageUnavailable
from bot.storage.postgres import PostgresStore, create_pool
from bot.storage.sqlite import SQLiteStore
from tests.postgres_server import Relay, fresh_schema, refused_port, start_throwaway_cluster


@pytest.fixture
async def schema_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty schema."""
    async with fresh_schema() as url:
        yield url


@contextlib.asynccontextmanager
async def pool_on(url: str, size: int = 2) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `url`, closed at the end of the block."""
    pool = await create_pool(url, size=size)
    try:
        yield pool
    finally:
        await pool.close()


async def _add(store: PostgresStore) -> int:
    job = await store.add_job(
        guild_id=1,
        channel_id=100,
        requester_id=10,
        request=GenerationRequest.create("a fox in the snow", seed=42),
    )
    return job.id


# What only a store shared by several processes keeps (migration 7): no SQLite twin.
SHARED_ONLY = {"job_leases", "guild_turns", "bot_processes", "identify_buckets"}


async def _columns(url: str) -> dict[str, list[str]]:
    """Each table of the URL's schema with its columns in order."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
    finally:
        await connection.close()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


async def test_open_migrates_the_schema_once(schema_url: str) -> None:
    async with pool_on(schema_url) as pool:
        store = await PostgresStore.open(pool)
        assert await store.schema_version() == len(postgres_migrations.MIGRATIONS)
        job_id = await _add(store)
        reopened = await PostgresStore.open(pool)
        assert await reopened.schema_version() == len(postgres_migrations.MIGRATIONS)
        assert (await reopened.get(job_id)) == (await store.get(job_id))
    tables = await _columns(schema_url)
    assert {
        "jobs",
        "timings",
        "guild_settings",
        "guild_bans",
        "schema_version",
    } | SHARED_ONLY == set(tables)


async def test_every_sqlite_table_and_column_has_its_postgres_twin(
    schema_url: str, tmp_path: Path
) -> None:
    # migrate-store copies column by column: a SQLite migration without its PostgreSQL twin
    # fails here. (Today the two schemas are the same; PostgreSQL may later add its own.)
    assert len(postgres_migrations.MIGRATIONS) >= len(sqlite_migrations.MIGRATIONS)
    async with pool_on(schema_url) as pool:
        await PostgresStore.open(pool)
    on_postgres = await _columns(schema_url)
    store = await SQLiteStore.open(tmp_path / "twin.sqlite3")
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "twin.sqlite3")) as db:
        names = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        on_sqlite = {
            name: [row[1] for row in db.execute(f'PRAGMA table_info("{name}")')] for name in names
        }
    for table, columns in on_sqlite.items():
        assert table in on_postgres, f"no PostgreSQL table {table}"
        assert on_postgres[table][: len(columns)] == columns, table
    assert set(on_postgres) - set(on_sqlite) == {"schema_version"} | SHARED_ONLY


async def test_a_schema_migrated_by_a_newer_bot_is_refused(schema_url: str) -> None:
    async with pool_on(schema_url) as pool:
        store = await PostgresStore.open(pool)
        newer = len(postgres_migrations.MIGRATIONS) + 1
        async with pool.acquire() as connection:
            await connection.execute("UPDATE schema_version SET version = $1", newer)
        with pytest.raises(SchemaTooNew, match=f"schema version {newer}, newer than this bot"):
            await PostgresStore.open(pool)
        assert await store.schema_version() == newer  # left as it was


async def test_processes_starting_together_migrate_once(schema_url: str) -> None:
    async with pool_on(schema_url) as first, pool_on(schema_url) as second:
        stores = await asyncio.gather(*(PostgresStore.open(p) for p in (first, second, first)))
        versions = {await store.schema_version() for store in stores}
        assert versions == {len(postgres_migrations.MIGRATIONS)}
        async with first.acquire() as connection:
            assert await connection.fetchval("SELECT COUNT(*) FROM schema_version") == 1


async def test_a_session_ended_mid_statement_is_storage_unavailable_and_the_store_recovers(
    schema_url: str,
) -> None:
    async with pool_on(schema_url, size=1) as pool:
        store = await PostgresStore.open(pool)
        job_id = await _add(store)
        async with pool.acquire() as connection:
            backend = await connection.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(schema_url)
        try:
            # Hold the job's row, so that the store's UPDATE is on the server, waiting...
            locker = admin.transaction()
            await locker.start()
            await admin.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            update = asyncio.create_task(store.mark_submitted(job_id))
            await _until_waiting_on_a_lock(admin, backend)
            # ...when its session ends, as every session does when the server restarts.
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
            with pytest.raises(StorageUnavailable, match="PostgreSQL did not answer"):
                await update
            await locker.rollback()
        finally:
            await admin.close()
        job = await store.mark_submitted(job_id)  # a new session: the write was never made
        assert job.submitted_at is not None


async def _until_waiting_on_a_lock(admin: asyncpg.Connection, backend: int) -> None:
    """Return once the session `backend` waits for a lock (the server knows no event to await)."""
    async with asyncio.timeout(5):
        while True:
            if await admin.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", backend
            ):
                return
            await asyncio.sleep(0.01)


async def test_a_server_that_goes_away_makes_calls_unavailable_until_it_answers(
    schema_url: str,
) -> None:
    url = yarl.URL(schema_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    await relay.start()
    async with pool_on(str(url.with_port(relay.port))) as pool:
        store = await PostgresStore.open(pool)
        job_id = await _add(store)
        await relay.cut()
        for call in (store.get(job_id), store.unfinished(), store.is_banned(1, 2)):
            with pytest.raises(StorageUnavailable):
                await call
        await relay.start()
        job = await store.get(job_id)
        assert job is not None and job.id == job_id
        await relay.cut()


async def test_an_unreachable_server_at_start_is_storage_unavailable() -> None:
    with refused_port() as port:
        url = f"postgresql://user:hunter2@127.0.0.1:{port}/test"
        with pytest.raises(StorageUnavailable) as raised:
            await create_pool(url)
    message = str(raised.value)
    assert message.startswith(f"could not connect to PostgreSQL at 127.0.0.1:{port}/test (")
    assert "hunter2" not in message


async def test_a_throwaway_cluster_starts_from_the_installed_binaries() -> None:
    # The tests' way out when no server answers at 127.0.0.1:5432 (tests/postgres_server.py).
    cluster = await asyncio.to_thread(start_throwaway_cluster)
    if cluster is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) are installed")
    try:
        async with pool_on(cluster.url, size=1) as pool:
            store = await PostgresStore.open(pool)
            assert await store.get(await _add(store)) is not None
    finally:
        await asyncio.to_thread(cluster.stop)
    assert not await asyncio.to_thread(cluster.folder.exists)
