"""`animate-bot migrate-store`: a real SQLite file copied into a real PostgreSQL schema.

Every table arrives row for row, and the PostgreSQL store reads back what the SQLite store
read, so buttons (job ids), history, settings, bans, quotas and estimates carry over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.core.eta import Timing
from bot.core.jobs import GenerationRequest
from bot.storage.base import Store
from bot.storage.postgres import PostgresStore, create_pool
from bot.storage.sqlite import SQLiteStore
from bot.storage.transfer import TransferRefused, copy_sqlite_to_postgres
from tests.conftest import StoreClock
from tests.e2e.harness import ROOT
from tests.postgres_server import fresh_schema

TABLES = ("guild_bans", "guild_settings", "jobs", "timings")
GUILD, OTHER_GUILD, ALICE, BOB, OWNER = 1, 2, 10, 11, 99
TOON = "toonyou_beta3.safetensors"


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL schema."""
    async with fresh_schema() as url:
        yield url


@contextlib.asynccontextmanager
async def pool_on(url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `url`, closed at the end of the block."""
    pool = await create_pool(url, size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def _fill(path: Path) -> int:
    """A SQLite file with jobs in every state, a remix, settings, bans and timings; return the
    id the next job gets."""
    clock = StoreClock()
    store = await SQLiteStore.open(path, clock=clock)
    try:

        async def add(user: int = ALICE, **extra: Any) -> int:
            clock.now += 61
            job = await store.add_job(
                guild_id=GUILD,
                channel_id=100,
                requester_id=user,
                request=GenerationRequest.create(f"prompt {clock.now}", seed=7),
                **extra,
            )
            return job.id

        done = await add(upload_limit=25 * 1024 * 1024)
        await store.set_request_message(done, 5001)
        await store.mark_submitted(done)
        await store.mark_running(done, "pred-done")
        await store.mark_delivering(done, predict_time=12.5, model_version="v1")
        await store.mark_done(done, result_message_id=6001)
        remix = await add(BOB, parent_job_id=done)
        await store.mark_submitted(remix)
        await store.mark_failed(remix, "The animation service refused it.", predict_time=3.0)
        await store.mark_canceled(await add(), "canceled by the requester")
        running = await add(BOB)
        await store.mark_submitted(running)
        await store.mark_running(running, "pred-running")
        rerun = await add()
        await store.mark_submitted(rerun)
        await store.mark_running(rerun, "pred-expired")
        await store.mark_delivering(rerun, predict_time=8.0)
        await store.mark_rerun(rerun)
        deleted = await add()
        await store.mark_submitted(deleted)
        await store.mark_running(deleted, "pred-deleted")
        await store.mark_delivering(deleted, predict_time=2.0)
        await store.mark_done(deleted, result_message_id=6002)
        await store.mark_deleted(deleted)
        queued = await add(interaction_token="aW50ZXJhY3Rpb24:token")  # not yet shown
        await store.put_guild_setting(GUILD, "steps", "30", updated_by=OWNER)
        await store.put_guild_setting(OTHER_GUILD, "channel_ids", "[5, 6]", updated_by=OWNER)
        await store.ban(GUILD, BOB, banned_by=OWNER)
        await store.ban(OTHER_GUILD, ALICE, banned_by=OWNER)
        for run_time in (40.0, 41.5, 39.0):
            await store.record_timing(Timing(TOON, 25, 1.5, run_time))
        await store.record_timing(Timing(TOON, 10, 0.5, 15.0))
        return queued + 1
    finally:
        await store.close()


def _sqlite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    """Every row of a SQLite table as a dict, in id/rowid order."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(f'SELECT * FROM "{table}" ORDER BY rowid')]


async def _postgres_rows(url: str, table: str) -> list[dict[str, Any]]:
    """Every row of a PostgreSQL table as a dict, in the same order as the SQLite rows."""
    order = {"guild_bans": "guild_id, user_id", "guild_settings": "guild_id, name"}
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(f'SELECT * FROM "{table}" ORDER BY {order.get(table, "id")}')
    finally:
        await connection.close()
    return [
        {key: int(value) if isinstance(value, bool) else value for key, value in row.items()}
        for row in rows
    ]


async def _reads(store: Store, job_ids: range) -> dict[str, object]:
    """Everything the bot reads from a store, for the data `_fill` made."""
    return {
        "jobs": [await store.get(job_id) for job_id in job_ids],
        "unfinished": await store.unfinished(),
        "history": await store.history(GUILD, ALICE, limit=10),
        "history after": await store.history(GUILD, BOB, limit=10, after_id=1),
        "prediction": await store.job_for_prediction("pred-running"),
        "timings": await store.recent_timings(per_key=2),
        "settings": await store.guild_settings(),
        "bans": [await store.is_banned(g, u) for g in (GUILD, OTHER_GUILD) for u in (ALICE, BOB)],
        "requests": await store.requests_since(GUILD, ALICE, 0),
        "gpu": await store.gpu_seconds_since(GUILD, 0),
        "by day": await store.usage_by_day(GUILD, 0),
        "by member": await store.usage_by_member(GUILD, 0),
    }


async def test_every_table_arrives_and_reads_back_the_same(tmp_path: Path, target: str) -> None:
    source = tmp_path / "bot.sqlite3"
    next_id = await _fill(source)
    async with pool_on(target) as pool:
        copied = await copy_sqlite_to_postgres(source, pool)
        assert copied == {table: len(_sqlite_rows(source, table)) for table in TABLES}
        assert copied["jobs"] == next_id - 1 and copied["timings"] == 4
        for table in TABLES:
            assert await _postgres_rows(target, table) == _sqlite_rows(source, table), table
        on_postgres = await PostgresStore.open(pool)
        on_sqlite = await SQLiteStore.open(source)
        try:
            expected = await _reads(on_sqlite, range(1, next_id))
            assert await _reads(on_postgres, range(1, next_id)) == expected
        finally:
            await on_sqlite.close()
        # New rows continue after the copied ones: no old button names a new job.
        job = await on_postgres.add_job(
            guild_id=GUILD,
            channel_id=100,
            requester_id=ALICE,
            request=GenerationRequest.create("after the move", seed=1),
        )
        assert job.id == next_id
        await on_postgres.record_timing(Timing(TOON, 10, 0.5, 16.0))
        timing_ids = [row["id"] for row in await _postgres_rows(target, "timings")]
        assert timing_ids == sorted(set(timing_ids))


async def test_a_target_that_holds_data_is_refused_and_left_alone(
    tmp_path: Path, target: str
) -> None:
    source = tmp_path / "bot.sqlite3"
    await _fill(source)
    async with pool_on(target) as pool:
        await copy_sqlite_to_postgres(source, pool)
        before = {table: await _postgres_rows(target, table) for table in TABLES}
        with pytest.raises(TransferRefused, match=r"already holds data \(2 guild_bans, 2 guild_"):
            await copy_sqlite_to_postgres(source, pool)
        assert {table: await _postgres_rows(target, table) for table in TABLES} == before


async def test_a_sqlite_column_postgresql_lacks_is_refused(tmp_path: Path, target: str) -> None:
    source = tmp_path / "bot.sqlite3"
    await _fill(source)
    with contextlib.closing(sqlite3.connect(source)) as db:
        db.execute("ALTER TABLE guild_bans ADD COLUMN reason TEXT")
        db.execute("CREATE TABLE later (id INTEGER)")
        db.commit()
    async with pool_on(target) as pool:
        with pytest.raises(TransferRefused, match=r"no place for guild_bans\.reason, later$"):
            await copy_sqlite_to_postgres(source, pool)
        assert await _postgres_rows(target, "jobs") == []


async def test_a_missing_sqlite_file_is_refused_without_creating_one(
    tmp_path: Path, target: str
) -> None:
    missing = tmp_path / "nowhere" / "bot.sqlite3"
    async with pool_on(target) as pool:
        with pytest.raises(TransferRefused, match="there is no SQLite database at"):
            await copy_sqlite_to_postgres(missing, pool)
    assert not missing.parent.exists()


async def _cli(database_path: Path, *args: str) -> tuple[int, str, str]:
    """Run `python -m bot migrate-store ...` as an operator would; return code, out, err."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        DISCORD_TOKEN="discord-token",
        REPLICATE_API_TOKEN="replicate-token",
        DATABASE_PATH=str(database_path),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "migrate-store",
        *args,
        cwd=database_path.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_copies_once_then_refuses_with_one_line(
    tmp_path: Path, target: str
) -> None:
    source = tmp_path / "bot.sqlite3"
    await _fill(source)
    code, out, err = await _cli(source, "--to", target)
    assert (code, err) == (0, "")
    assert out.startswith(f"copied {source} into PostgreSQL at 127.0.0.1:")
    assert "(2 guild_bans, 2 guild_settings, 7 jobs, 4 timings)" in out
    code, out, err = await _cli(source, "--to", target)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "nothing copied: the target already holds data" in err


@pytest.mark.parametrize(
    ("to", "says"),
    [
        ("mysql://root:pw@127.0.0.1/test", "--to is invalid: must start with postgresql://"),
        ("postgresql://root:pw@127.0.0.1:port/test", "--to is invalid: is not a URL"),
    ],
)
async def test_a_malformed_target_exits_2_naming_the_option(
    tmp_path: Path, to: str, says: str
) -> None:
    code, out, err = await _cli(tmp_path / "bot.sqlite3", "--to", to)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert says in err and ":pw@" not in err
