"""Faults of real Cog servers under the real scheduler: killed, restarted, refused, hostile peers.

Each test starts servers of its own (they are killed or restarted, or started differently).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bot.backends.cog.ids import server_of
from bot.backends.cog.probe import probe_server
from bot.backends.cog.routing import RoutingBackend
from bot.backends.replicate import PredictionClient
from bot.core.jobs import Job, JobStatus
from bot.core.reporter import Stage
from bot.storage.sqlite import SQLiteStore
from tests.cog_pools import callback_url, cog_pool, scheduler_on
from tests.cog_servers import SAMPLE, CogServerProcess, foreign_model, start_all
from tests.fakes.predictions import FakePredictionAPI
from tests.scheduling import RecordingReporter, submit


@contextlib.contextmanager
def servers(*processes: CogServerProcess) -> Iterator[list[CogServerProcess]]:
    """Start servers for one test and stop them at its end."""
    started = start_all(list(processes))
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def sampling(reporter: RecordingReporter, job: Job) -> bool:
    """True once the job's message shows its progress bar (its prediction runs)."""
    return any(job_id == job.id and u.stage is Stage.SAMPLING for job_id, u in reporter.statuses)


async def placed_on(store: SQLiteStore, job: Job, timeout: float = 15) -> str:
    """The job's prediction id once stored (no event tells of it: the store is read again)."""
    async with asyncio.timeout(timeout):
        while True:
            stored = await store.get(job.id)
            if stored is not None and stored.prediction_id is not None:
                return stored.prediction_id
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("callbacks", [True, False], ids=["webhooks", "held-requests"])
async def test_a_server_killed_mid_prediction_has_its_job_run_again_elsewhere(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path, callbacks: bool
) -> None:
    reporter = RecordingReporter()
    pair = [CogServerProcess(seconds=1.5, log_dir=tmp_path) for _ in range(2)]
    with servers(*pair):
        async with (
            cog_pool(http, pair, tmp_path, callbacks=callbacks) as pool,
            scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
        ):
            job = await submit(scheduler, seed=4242)
            doomed = server_of(await placed_on(store, job))
            await asyncio.to_thread(pair[0 if doomed == "gpu-a" else 1].kill)
            await reporter.wait_for(lambda: reporter.delivered, timeout=30)
            await scheduler.wait_idle()
    assert len(reporter.delivered) == 1 and reporter.files == [SAMPLE.read_bytes()]
    delivered, result = reporter.delivered[0]
    assert delivered.reruns == 1 and delivered.request.seed == 4242
    assert server_of(result.prediction_id) not in (None, doomed), "it ran on the dead server"
    assert not reporter.failures


async def test_a_restarted_server_that_forgot_its_prediction_runs_it_again(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    server = CogServerProcess(seconds=1.5, log_dir=tmp_path)
    with servers(server):
        async with (
            cog_pool(http, [server], tmp_path, interval=0.5) as pool,
            scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
        ):
            job = await submit(scheduler, seed=77)
            await reporter.wait_for(lambda: sampling(reporter, job), timeout=15)
            await asyncio.to_thread(server.restart)
            await reporter.wait_for(lambda: reporter.delivered, timeout=30)
    [(delivered, result)] = reporter.delivered
    assert delivered.reruns == 1 and server_of(result.prediction_id) == "gpu-a"
    assert reporter.files == [SAMPLE.read_bytes()] and not reporter.failures
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.DONE


async def test_outputs_uploaded_to_the_bot_are_taken_only_for_its_own_predictions(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    url = callback_url()
    server = CogServerProcess(seconds=0.3, upload_url=f"{url}/uploads/", log_dir=tmp_path)
    with servers(server):
        async with (
            cog_pool(http, [server], tmp_path, callbacks=url) as pool,
            scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
        ):
            # Strangers on the network: an upload for no prediction of ours, a made-up webhook.
            async with http.put(
                f"{url}/uploads/evil.mp4", data=b"evil", headers={"X-Prediction-Id": "job-1-r0"}
            ) as refused_upload:
                assert refused_upload.status == 404
            async with http.post(f"{url}/webhook/{'0' * 32}", json={"id": "x"}) as refused_hook:
                assert refused_hook.status == 404
            job = await submit(scheduler, seed=3)
            await reporter.wait_for(lambda: reporter.delivered, timeout=30)
            stored = await store.get(job.id)
            assert stored is not None and stored.prediction_id is not None
            state = await pool.pool.get(stored.prediction_id)
            [output] = state.output_urls
            assert output.startswith(f"{url}/uploads/")
            # The webhook of an ended prediction is refused like any stranger's.
            token = output.removeprefix(f"{url}/uploads/").split("/")[0]
            async with http.post(f"{url}/webhook/{token}", json={}) as late:
                assert late.status == 404
    assert reporter.files == [SAMPLE.read_bytes()]
    uploads = sorted(p.name for p in (tmp_path / "cog-uploads").rglob("*") if p.is_file())
    assert uploads == ["out.mp4"], "a stranger's upload was stored"


@pytest.mark.parametrize("overflow_after", [1.0, None], ids=["overflow", "never"])
async def test_a_job_that_would_wait_too_long_for_a_gpu_goes_to_replicate(
    http: aiohttp.ClientSession,
    store: SQLiteStore,
    tmp_path: Path,
    prediction_api: FakePredictionAPI,
    client: PredictionClient,
    overflow_after: float | None,
) -> None:
    reporter = RecordingReporter()
    server = CogServerProcess(seconds=1.0, log_dir=tmp_path)
    with servers(server):
        async with cog_pool(http, [server], tmp_path) as pool:
            backend = RoutingBackend(pool.pool, client, overflow_after=overflow_after)
            async with scheduler_on(
                store, backend, pool.pool, reporter, tmp_path, running_per_guild=2
            ) as scheduler:
                jobs = [await submit(scheduler, user=n, seed=60 + n) for n in range(2)]
                await reporter.wait_for(lambda: len(reporter.delivered) == 2, timeout=30)
    where = {job.id: server_of(result.prediction_id) for job, result in reporter.delivered}
    assert where[jobs[0].id] == "gpu-a"
    # The one GPU is busy for a while: with overflow the second job is paid for at once.
    assert where[jobs[1].id] == (None if overflow_after else "gpu-a")
    assert prediction_api.creates == (1 if overflow_after else 0)
    assert all(data == SAMPLE.read_bytes() for data in reporter.files[:1])


async def test_a_server_of_another_model_is_refused_and_gets_no_work(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    other = CogServerProcess(model=foreign_model(tmp_path / "other"), log_dir=tmp_path)
    good = CogServerProcess(seconds=0.3, log_dir=tmp_path)
    with servers(other, good):
        probe = await probe_server(http, other.url)
        assert not probe.ok and "does not take this model's inputs" in probe.detail
        assert "n_prompt, motion_module" in probe.detail
        assert (await probe_server(http, good.url)).ok
        async with (
            cog_pool(http, [other, good], tmp_path) as pool,
            scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
        ):
            assert pool.pool.servers[0].refused and not pool.pool.has_capacity(1)
            await submit(scheduler, seed=8)
            await reporter.wait_for(lambda: reporter.delivered, timeout=30)
    assert [server_of(result.prediction_id) for _, result in reporter.delivered] == ["gpu-b"]


async def test_a_server_whose_setup_failed_is_reported_and_gets_no_work(
    http: aiohttp.ClientSession,
    store: SQLiteStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = RecordingReporter()
    broken = CogServerProcess(fail_setup=True, log_dir=tmp_path)
    good = CogServerProcess(seconds=0.3, log_dir=tmp_path)
    broken.start()
    try:
        with servers(good):
            await asyncio.to_thread(broken.wait_ready, status="SETUP_FAILED")
            probe = await probe_server(http, broken.url)
            assert not probe.ok and probe.detail.startswith("SETUP_FAILED")
            async with (
                cog_pool(http, [broken, good], tmp_path) as pool,
                scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
            ):
                assert pool.pool.servers[0].health == "SETUP_FAILED"
                await submit(scheduler, seed=9)
                await reporter.wait_for(lambda: reporter.delivered, timeout=30)
    finally:
        broken.stop()
    assert [server_of(result.prediction_id) for _, result in reporter.delivered] == ["gpu-b"]
    assert any("reports SETUP_FAILED: it gets no work" in r.message for r in caplog.records)
