"""The Cog pool with the real scheduler on real Cog servers (PyPI `cog`): dispatch and outputs.

Three servers are started once for the module; each test gets a pool and a scheduler of its
own on them. Faults (servers killed or restarted) are in test_cog_faults.py.
"""

from __future__ import annotations

import asyncio
import itertools
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from bot.backends.base import PredictionAPIError
from bot.backends.cog.ids import server_of
from bot.core.jobs import JobStatus
from bot.storage.sqlite import SQLiteStore
from tests.cog_pools import cog_pool, scheduler_on
from tests.cog_servers import SAMPLE, CogServerProcess, start_all
from tests.scheduling import RecordingReporter, submit

GUILD_A, GUILD_B = 1, 2


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[CogServerProcess]]:
    """Three real Cog servers whose predictions take 0.3 s, each noting when it ran one."""
    logs = tmp_path_factory.mktemp("cog-logs")
    servers = start_all(
        [CogServerProcess(seconds=0.3, log_dir=logs, spans=logs / f"spans-{n}") for n in range(3)]
    )
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def idle(trio: list[CogServerProcess]) -> Iterator[None]:
    """Each test starts and ends with every server idle."""
    for server in trio:
        server.wait_ready()
    yield
    for server in trio:
        server.wait_ready()


def _runs(server: CogServerProcess) -> list[tuple[float, float]]:
    """When each prediction ran on the server, as the server itself noted it."""
    assert server.spans is not None
    if not server.spans.exists():
        return []
    lines = server.spans.read_text().splitlines()
    return [(float(began), float(ended)) for began, ended in (line.split() for line in lines)]


def _when(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_ten_jobs_of_two_guilds_share_three_servers_one_at_a_time(
    http: aiohttp.ClientSession,
    store: SQLiteStore,
    trio: list[CogServerProcess],
    tmp_path: Path,
) -> None:
    reporter = RecordingReporter()
    before = [len(_runs(server)) for server in trio]
    async with (
        cog_pool(http, trio, tmp_path) as pool,
        scheduler_on(
            store,
            pool.pool,
            pool.pool,
            reporter,
            tmp_path,
            running_per_guild=5,
            running_total=10,
            queued_per_member=10,
        ) as scheduler,
    ):
        jobs = [
            await submit(scheduler, guild=GUILD_A if n % 2 else GUILD_B, user=n % 3, seed=n + 1)
            for n in range(10)
        ]
        await reporter.wait_for(lambda: len(reporter.delivered) == 10, timeout=60)
        await scheduler.wait_idle()
        states = [await pool.pool.get(job.prediction_id or "") for job, _ in reporter.delivered]
    delivered = sorted(job.id for job, _ in reporter.delivered)
    assert delivered == sorted(job.id for job in jobs), "a job was not delivered exactly once"
    assert all(data == SAMPLE.read_bytes() for data in reporter.files)
    assert not reporter.failures
    by_server: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for state in states:
        server = server_of(state.id)
        assert server is not None and state.status == "succeeded"
        by_server[server].append((_when(state.created_at), _when(state.completed_at)))
    assert sorted(by_server) == ["gpu-a", "gpu-b", "gpu-c"], "a server was never used"
    for spans in by_server.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, "a server was sent a second prediction while one ran"
    # As the servers saw it: each ran its share, one after another, and no more than ten.
    ran = [sorted(_runs(server)[count:]) for server, count in zip(trio, before, strict=True)]
    assert sum(len(runs) for runs in ran) == 10 and all(ran), ran
    for runs in ran:
        for (_, end), (start, _) in itertools.pairwise(runs):
            assert start >= end, "a server ran two predictions at once"
    for job in jobs:
        stored = await store.get(job.id)
        assert stored is not None and stored.status is JobStatus.DONE
        assert stored.reruns == 0 and stored.predict_time is not None


async def test_a_busy_answer_sends_the_job_to_the_next_server(
    http: aiohttp.ClientSession,
    store: SQLiteStore,
    trio: list[CogServerProcess],
    tmp_path: Path,
) -> None:
    reporter = RecordingReporter()
    # A server of its own, whose stranger's prediction outlasts the test (not a 0.3 s race).
    [taken] = await asyncio.to_thread(start_all, [CogServerProcess(seconds=30, log_dir=tmp_path)])
    try:
        async with cog_pool(http, [taken, trio[1]], tmp_path, interval=60) as pool:
            # Someone else's prediction takes gpu-a after the pool last looked: it answers 409.
            stranger = urllib.request.Request(
                f"{taken.url}/predictions/stranger",
                data=b'{"id": "stranger", "input": {"prompt": "theirs", "steps": 25, "seed": 1}}',
                headers={"Content-Type": "application/json", "Prefer": "respond-async"},
                method="PUT",
            )
            await asyncio.to_thread(urllib.request.urlopen, stranger)
            async with scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler:
                job = await submit(scheduler, seed=99)
                await reporter.wait_for(lambda: reporter.delivered, timeout=30)
            assert pool.pool.servers[0].foreign_busy
    finally:
        await asyncio.to_thread(taken.kill)  # its stranger's prediction has 30 s to go
    stored = await store.get(job.id)
    assert stored is not None and server_of(stored.prediction_id) == "gpu-b"
    assert not reporter.failures and len(reporter.delivered) == 1


@pytest.mark.parametrize("callbacks", [True, False], ids=["webhooks", "held-requests"])
async def test_outputs_come_as_data_uris_with_webhooks_or_held_requests(
    http: aiohttp.ClientSession,
    store: SQLiteStore,
    trio: list[CogServerProcess],
    tmp_path: Path,
    callbacks: bool,
) -> None:
    reporter = RecordingReporter()
    async with (
        cog_pool(http, trio, tmp_path, callbacks=callbacks) as pool,
        scheduler_on(
            store, pool.pool, pool.pool, reporter, tmp_path, running_per_guild=3, running_total=3
        ) as scheduler,
    ):
        jobs = [await submit(scheduler, user=n, seed=10 + n) for n in range(4)]
        await reporter.wait_for(lambda: len(reporter.delivered) == 4, timeout=60)
        states = [await pool.pool.get(job.prediction_id or "") for job, _ in reporter.delivered]
    assert sorted(job.id for job, _ in reporter.delivered) == [job.id for job in jobs]
    assert all(data == SAMPLE.read_bytes() for data in reporter.files)
    kept = (tmp_path / "cog-uploads").as_uri()
    for state in states:
        # A data: URI, moved once ended to a file beside the uploads (test_cog_losses.py).
        assert state.output_urls[0].startswith(("data:video/mp4;base64,", kept))
        assert state.predict_time is not None and "Using seed:" in state.logs


async def test_a_running_job_is_canceled_on_its_server(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    [slow] = await asyncio.to_thread(start_all, [CogServerProcess(seconds=20, log_dir=tmp_path)])
    try:
        async with (
            cog_pool(http, [slow], tmp_path) as pool,
            scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
        ):
            job = await submit(scheduler, seed=5)
            # The logs webhooks (every 0.5 s) move the progress bar.
            await reporter.wait_for(
                lambda: any(u.stage.name == "SAMPLING" for _, u in reporter.statuses), timeout=30
            )
            started = asyncio.get_running_loop().time()
            assert (await scheduler.cancel(job.id)).value == "canceling"
            await reporter.wait_for(lambda: reporter.canceled, timeout=15)
            assert asyncio.get_running_loop().time() - started < 10, "it ran to its end"
            stored = await store.get(job.id)
            assert stored is not None and stored.prediction_id is not None
            assert (await pool.pool.get(stored.prediction_id)).status == "canceled"
        await asyncio.to_thread(slow.wait_ready, timeout=10)  # the server is free again
    finally:
        slow.stop()
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.CANCELED
    assert not reporter.delivered


@pytest.mark.parametrize("callbacks", [True, False], ids=["webhooks", "held-requests"])
async def test_an_input_the_server_refuses_fails_the_create_and_frees_the_server(
    http: aiohttp.ClientSession, trio: list[CogServerProcess], tmp_path: Path, callbacks: bool
) -> None:
    async with cog_pool(http, trio[:1], tmp_path, callbacks=callbacks) as pool:
        with pytest.raises(PredictionAPIError) as refused:
            await pool.pool.create({"prompt": "x", "steps": 500, "seed": 1})
        assert refused.value.status == 422
        # Each bad input by name, in words (the held POST and the PUT alike), never JSON.
        assert refused.value.detail.startswith("steps: ") and "{" not in refused.value.detail
        assert pool.pool.has_free_server() and pool.pool.has_capacity(0)
