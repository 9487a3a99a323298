"""What only the SQLite store does: its file, WAL, migrations, its errors, its raw rows.

Behaviour every store must have is in tests/test_store_contract.py, which runs on SQLite too.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from bot.core.eta import Timing
from bot.core.jobs import GenerationRequest
from bot.core.redaction import MASK
from bot.storage import sqlite as sqlite_store
from bot.storage.base import SchemaTooNew
from bot.storage.sqlite import TIMINGS_KEPT, SQLiteStore
from bot.storage.sqlite_migrations import MIGRATIONS
from tests.conftest import LEAKS_IN_REASONS, end_with_secret_reasons

TOKEN = "aW50ZXJhY3Rpb246MTIz:interaction-token-value"


def _request(seed: int = 42) -> GenerationRequest:
    return GenerationRequest.create("a fox in the snow", seed=seed)


async def _add(store: SQLiteStore, *, token: str | None = None) -> int:
    job = await store.add_job(
        guild_id=1, channel_id=100, requester_id=10, request=_request(), interaction_token=token
    )
    return job.id


def _raw_row(path: Path, job_id: int) -> sqlite3.Row:
    """A job's row as SQLite holds it, read past the store."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None
    return row


@pytest.fixture
def path(db_path: Path) -> Path:
    """The file behind `opened` (conftest's `db_path`)."""
    return db_path


@pytest.fixture
def opened(store: SQLiteStore) -> SQLiteStore:
    """A store on `path` (conftest's `store`), so a test can read the file behind it."""
    return store


async def test_open_creates_folder_file_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "bot.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        assert path.exists()
        assert await store.schema_version() == len(MIGRATIONS)
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"jobs", "timings", "guild_settings", "guild_bans"} <= tables


async def test_reopening_keeps_data_and_does_not_migrate_again(path: Path) -> None:
    store = await SQLiteStore.open(path)
    job_id = await _add(store)
    await store.close()
    store = await SQLiteStore.open(path)
    try:
        job = await store.get(job_id)
        assert job is not None and job.request == _request()
        assert await store.schema_version() == len(MIGRATIONS)
    finally:
        await store.close()


async def test_refuses_a_database_from_a_newer_bot(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew, match="newer than this bot"):
        await SQLiteStore.open(path)


async def test_a_database_from_before_the_token_gains_the_column(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for number, migration in enumerate(MIGRATIONS[:5], start=1):
            db.executescript(f"BEGIN;\n{migration}\nPRAGMA user_version = {number};\nCOMMIT;")
        db.execute(
            "INSERT INTO jobs (guild_id, channel_id, requester_id, input_json, seed, status, "
            "created_at, updated_at) VALUES (1, 2, 3, ?, 42, 'queued', 0, 0)",
            (_request().to_json(),),
        )
    store = await SQLiteStore.open(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS) >= 6
        (job,) = await store.unfinished()
        assert job.request == _request() and job.interaction_token is None
    finally:
        await store.close()


async def test_probe_write_leaves_no_row_in_the_file(opened: SQLiteStore, path: Path) -> None:
    await opened.probe_write()
    await opened.probe_write()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM timings").fetchone()[0] == 0


async def test_probe_write_fails_while_another_writer_holds_the_file(
    opened: SQLiteStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "PROBE_BUSY_TIMEOUT", 0.05)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # a stuck writer: nothing else can write the file
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await opened.probe_write()
        other.execute("ROLLBACK")
    await opened.probe_write()  # no transaction was left open by the failure
    await opened.record_timing(Timing("toon", 25, 1.0, 2.0))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM timings").fetchone()[0] == 1


async def test_a_second_job_with_the_same_prediction_is_an_integrity_error(
    opened: SQLiteStore,
) -> None:
    first, second = await _add(opened), await _add(opened)
    for job_id in (first, second):
        await opened.mark_submitted(job_id)
    await opened.mark_running(first, "same")
    with pytest.raises(sqlite3.IntegrityError):
        await opened.mark_running(second, "same")


async def test_the_interaction_token_column_is_emptied_in_the_file(
    opened: SQLiteStore, path: Path
) -> None:
    job_id = await _add(opened, token=TOKEN)
    assert _raw_row(path, job_id)["interaction_token"] == TOKEN
    await opened.set_request_message(job_id, 555)
    row = _raw_row(path, job_id)
    assert row["request_message_id"] == 555 and row["interaction_token"] is None


@pytest.mark.parametrize("ending", ["done", "failed", "canceled"])
async def test_the_interaction_token_column_is_emptied_when_the_job_ends(
    opened: SQLiteStore, path: Path, ending: str
) -> None:
    job_id = await _add(opened, token=TOKEN)
    await opened.mark_submitted(job_id)
    await opened.mark_running(job_id, "p1")
    assert _raw_row(path, job_id)["interaction_token"] == TOKEN
    if ending == "done":
        await opened.mark_delivering(job_id, predict_time=3.0)
        await opened.mark_done(job_id, result_message_id=777)
    elif ending == "failed":
        await opened.mark_failed(job_id, "CUDA out of memory")
    else:
        await opened.mark_canceled(job_id, "by request")
    row = _raw_row(path, job_id)
    assert row["status"] == ending and row["interaction_token"] is None


async def test_reasons_are_masked_in_the_file(opened: SQLiteStore, path: Path) -> None:
    failed, canceled, untold = await end_with_secret_reasons(opened, _add)
    for job_id in (failed, canceled):
        error = _raw_row(path, job_id)["error"]
        for leaked in LEAKS_IN_REASONS:
            assert leaked not in error
        assert MASK in error
    assert _raw_row(path, failed)["error"].startswith("The service said: token [redacted] refused")
    assert _raw_row(path, untold)["error"] is None


async def test_a_rerun_moves_the_billed_time_to_its_own_column(
    opened: SQLiteStore, path: Path
) -> None:
    job_id = await _add(opened)
    await opened.mark_submitted(job_id)
    await opened.mark_running(job_id, "first")
    await opened.mark_delivering(job_id, predict_time=30.0)
    await opened.mark_rerun(job_id)
    row = _raw_row(path, job_id)
    assert row["predict_time"] is None and row["earlier_predict_time"] == 30.0
    assert row["reruns"] == 1 and row["prediction_id"] is None


async def test_at_most_timings_kept_per_key_stay_in_the_file(
    opened: SQLiteStore, path: Path
) -> None:
    for run in range(TIMINGS_KEPT + 5):
        await opened.record_timing(Timing("toon", 25, 1.0, float(run)))
    await opened.record_timing(Timing("toon", 30, 1.0, 1.0))
    with sqlite3.connect(path) as db:
        counts = dict(db.execute("SELECT steps, COUNT(*) FROM timings GROUP BY steps").fetchall())
        oldest = db.execute("SELECT MIN(run_time) FROM timings WHERE steps = 25").fetchone()[0]
    assert counts == {25: TIMINGS_KEPT, 30: 1}
    assert oldest == 5.0


async def test_statements_and_their_parameters_stay_out_of_debug_logs(opened: SQLiteStore) -> None:
    # aiosqlite logs each statement with its parameters (prompts, interaction tokens).
    assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
