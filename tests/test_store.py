"""The job store against a real SQLite file: migrations and every transition."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from bot.core import redaction
from bot.core.jobs import GenerationRequest, JobStatus
from bot.core.redaction import MASK
from bot.storage.base import InvalidTransition, SchemaTooNew
from bot.storage.sqlite import SQLiteStore
from bot.storage.sqlite_migrations import MIGRATIONS


def _request(seed: int = 42) -> GenerationRequest:
    return GenerationRequest.create("a fox in the snow", seed=seed)


async def _add(store: SQLiteStore, *, guild: int = 1, user: int = 10) -> int:
    job = await store.add_job(guild_id=guild, channel_id=100, requester_id=user, request=_request())
    return job.id


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
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "jobs" in tables


async def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
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


async def test_refuses_a_database_from_a_newer_bot(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew, match="newer than this bot"):
        await SQLiteStore.open(path)


async def test_probe_write_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        await store.probe_write()
        await store.probe_write()  # the first one's transaction is over
        assert await store.recent_timings(per_key=10) == []
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM timings").fetchone()[0] == 0


async def test_probe_write_fails_on_a_database_that_refuses_writes(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "bot.sqlite3")
    try:
        # query_only makes SQLite refuse writes as a read-only file would, even for root.
        await store._db.execute("PRAGMA query_only = ON")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await store.probe_write()
        await store._db.execute("PRAGMA query_only = OFF")
        await store.probe_write()  # no transaction was left open by the failure
    finally:
        await store.close()


async def test_happy_path_transitions_record_each_step(store: SQLiteStore) -> None:
    job_id = await _add(store)
    job = await store.set_request_message(job_id, 555)
    assert job.status is JobStatus.QUEUED and job.request_message_id == 555
    job = await store.mark_submitted(job_id)
    assert job.status is JobStatus.SUBMITTED and job.submitted_at is not None
    job = await store.mark_running(job_id, "pred123")
    assert job.status is JobStatus.RUNNING and job.prediction_id == "pred123"
    assert await store.job_for_prediction("pred123") == job_id
    job = await store.mark_delivering(job_id, predict_time=12.5)
    assert job.status is JobStatus.DELIVERING and job.predict_time == 12.5
    job = await store.mark_done(job_id, result_message_id=777)
    assert job.status is JobStatus.DONE and job.result_message_id == 777
    assert job.completed_at is not None and job.status.is_final
    assert await store.unfinished() == []


async def test_transitions_refuse_out_of_order_steps(store: SQLiteStore) -> None:
    job_id = await _add(store)
    with pytest.raises(InvalidTransition):
        await store.mark_running(job_id, "p")
    with pytest.raises(InvalidTransition):
        await store.mark_done(job_id, result_message_id=1)
    await store.mark_canceled(job_id, "by request")
    for step in (
        store.mark_submitted(job_id),
        store.mark_failed(job_id, "late"),
        store.mark_canceled(job_id),
    ):
        with pytest.raises(InvalidTransition):
            await step
    job = await store.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELED and job.error == "by request"


async def test_failed_from_every_unfinished_state(store: SQLiteStore) -> None:
    states = []
    for steps in range(4):
        job_id = await _add(store)
        if steps >= 1:
            await store.mark_submitted(job_id)
        if steps >= 2:
            await store.mark_running(job_id, f"p{steps}")
        if steps >= 3:
            await store.mark_delivering(job_id, predict_time=None)
        job = await store.mark_failed(job_id, "CUDA out of memory")
        states.append(job.status)
    assert states == [JobStatus.FAILED] * 4


async def test_unfinished_lists_pending_jobs_oldest_first(store: SQLiteStore) -> None:
    first = await _add(store, guild=1)
    second = await _add(store, guild=2)
    done = await _add(store, guild=1)
    await store.mark_canceled(done)
    await store.mark_submitted(second)
    unfinished = await store.unfinished()
    assert [job.id for job in unfinished] == [first, second]
    assert [job.status for job in unfinished] == [JobStatus.QUEUED, JobStatus.SUBMITTED]


async def test_a_prediction_belongs_to_one_job(store: SQLiteStore) -> None:
    first, second = await _add(store), await _add(store)
    for job_id in (first, second):
        await store.mark_submitted(job_id)
    await store.mark_running(first, "same")
    with pytest.raises(sqlite3.IntegrityError):
        await store.mark_running(second, "same")


async def test_inputs_are_stored_in_full(store: SQLiteStore) -> None:
    request = GenerationRequest.create(
        "@everyone 🎉 «quotes» `code`",
        negative_prompt="blurry",
        model="lyriel_v16.safetensors",
        motion_module="mm_sd_v14",
        steps=40,
        guidance_scale=3.25,
        seed=2_147_483_647,
    )
    job = await store.add_job(guild_id=1, channel_id=2, requester_id=3, request=request)
    again = await store.get(job.id)
    assert again is not None and again.request == request and again.seed == 2_147_483_647


async def test_deleted_flag(store: SQLiteStore) -> None:
    job_id = await _add(store)
    job = await store.mark_deleted(job_id)
    assert job.deleted


async def test_a_rerun_goes_back_to_submitted_and_counts(tmp_path: Path) -> None:
    now = [1000.0]
    store = await SQLiteStore.open(tmp_path / "bot.sqlite3", clock=lambda: now[0])
    try:
        job_id = await _add(store)
        await store.mark_submitted(job_id)
        await store.mark_running(job_id, "expired-one")
        await store.mark_delivering(job_id, predict_time=30.0, model_version="v1")
        now[0] = 5000.0
        rerun = await store.mark_rerun(job_id)
        assert rerun.status is JobStatus.SUBMITTED and rerun.reruns == 1
        assert rerun.prediction_id is None and rerun.predict_time is None
        assert rerun.submitted_at == 5000.0 and rerun.started_at is None
        # The expired prediction is free again: the new one can be recorded.
        assert await store.job_for_prediction("expired-one") is None
        await store.mark_running(job_id, "fresh-one")
        assert (await store.mark_rerun(job_id)).reruns == 2
        with pytest.raises(InvalidTransition):
            await store.mark_rerun(job_id)  # submitted: nothing to rerun
    finally:
        await store.close()


async def test_format_and_upload_limit_are_kept_with_the_job(store: SQLiteStore) -> None:
    request = GenerationRequest.create("a gif", seed=3, output_format="gif")
    job = await store.add_job(
        guild_id=1, channel_id=2, requester_id=3, request=request, upload_limit=25 * 2**20
    )
    stored = await store.get(job.id)
    assert stored is not None and stored.request == request
    assert stored.request.output_format == "gif" and stored.upload_limit == 25 * 2**20
    assert await store.get(2**70) is None  # a forged id SQLite cannot hold is just unknown


TOKEN = "aW50ZXJhY3Rpb246MTIz:interaction-token-value"


def _raw_row(path: Path, job_id: int) -> sqlite3.Row:
    """A job's row as SQLite holds it, read past the store."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None
    return row


async def _add_with_token(store: SQLiteStore) -> int:
    job = await store.add_job(
        guild_id=1, channel_id=100, requester_id=10, request=_request(), interaction_token=TOKEN
    )
    assert job.interaction_token == TOKEN
    return job.id


async def test_the_interaction_token_is_kept_until_the_message_id_is_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        job_id = await _add_with_token(store)
        stored = await store.get(job_id)
        assert stored is not None and stored.interaction_token == TOKEN
        assert [job.interaction_token for job in await store.unfinished()] == [TOKEN]
        assert TOKEN not in repr(stored)  # a logged job never shows the credential
        assert _raw_row(path, job_id)["interaction_token"] == TOKEN
        job = await store.set_request_message(job_id, 555)
        assert job.request_message_id == 555 and job.interaction_token is None
        row = _raw_row(path, job_id)
        assert row["request_message_id"] == 555 and row["interaction_token"] is None
    finally:
        await store.close()


@pytest.mark.parametrize("ending", ["done", "failed", "canceled"])
async def test_the_interaction_token_is_cleared_when_the_job_ends(
    tmp_path: Path, ending: str
) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        # No message id was ever stored (a crash, failed edits): the token was still kept.
        job_id = await _add_with_token(store)
        await store.mark_submitted(job_id)
        await store.mark_running(job_id, "p1")
        if ending == "done":
            await store.mark_delivering(job_id, predict_time=3.0)
            job = await store.mark_done(job_id, result_message_id=777)
        elif ending == "failed":
            job = await store.mark_failed(job_id, "CUDA out of memory")
        else:
            job = await store.mark_canceled(job_id, "by request")
        assert job.status.value == ending and job.interaction_token is None
        assert _raw_row(path, job_id)["interaction_token"] is None
    finally:
        await store.close()


async def test_a_database_from_before_the_token_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
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


async def test_failure_and_cancel_reasons_are_stored_masked(tmp_path: Path) -> None:
    secret = "r8_registered-secret-value"
    redaction.register_secret(secret)
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        failed = await _add(store)
        await store.mark_failed(
            failed, f"The service said: token {secret} refused; Authorization: Bearer xyz987abc"
        )
        canceled = await _add(store)
        await store.mark_canceled(canceled, f"stopped (key {secret}, Bearer qwe456rty)")
        untold = await _add(store)
        await store.mark_canceled(untold)
        for job_id in (failed, canceled):
            error = _raw_row(path, job_id)["error"]
            for leaked in (secret, "xyz987abc", "qwe456rty"):
                assert leaked not in error
            assert MASK in error
            job = await store.get(job_id)
            assert job is not None and job.error == error
        assert "The service said: token [redacted] refused" in _raw_row(path, failed)["error"]
        assert _raw_row(path, untold)["error"] is None
    finally:
        await store.close()
        redaction.forget_secrets()


async def test_statements_and_their_parameters_stay_out_of_debug_logs(tmp_path: Path) -> None:
    # aiosqlite logs each statement with its parameters (prompts, interaction tokens).
    store = await SQLiteStore.open(tmp_path / "bot.sqlite3")
    try:
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        await store.close()
