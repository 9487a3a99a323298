"""When the Cog pool counts a prediction as lost, and when it must not; and the overflow's measure.

Real Cog servers (PyPI `cog`) run where the behaviour is the server's: a `completed` webhook
that lands late, webhooks that never reach the bot, a server that stalls. A small fake answers
what a real server cannot be made to (a proxy's 502 in place of a health check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.backends.base import AtCapacity, Attempt, current_attempt
from bot.backends.cog.callbacks import CogCallbacks
from bot.backends.cog.health import DOWN_AFTER_SECONDS
from bot.backends.cog.ids import CogPredictionId, derive_secret, server_of
from bot.backends.cog.losses import FORGOTTEN_AFTER_SECONDS, UNREACHED
from bot.backends.cog.pool import CogPool
from bot.backends.cog.routing import RoutingBackend
from bot.backends.cog.tracking import EndedPredictions, Tracked
from bot.backends.replicate import PredictionClient
from bot.core.budgets import ApiUse, LocalApiBudget
from bot.core.metering import BudgetedBackend
from bot.core.reporter import Stage
from bot.core.signals import JobSignals
from bot.storage.sqlite import SQLiteStore
from tests.cog_pools import MAX_BYTES, cog_pool, scheduler_on
from tests.cog_servers import SAMPLE, CogServerProcess, free_port, start_all
from tests.fakes.local_server import LocalServer
from tests.fakes.predictions import FakePredictionAPI
from tests.scheduling import RecordingReporter, submit

INPUT = {"prompt": "a cat", "steps": 5, "seed": 1}


@contextlib.contextmanager
def servers(*processes: CogServerProcess) -> Iterator[list[CogServerProcess]]:
    """Start servers for one test and stop them at its end."""
    started = start_all(list(processes))
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def runs(spans: Path) -> int:
    """How many predictions a server ran to their end."""
    return len(spans.read_text().splitlines()) if spans.exists() else 0


@contextlib.asynccontextmanager
async def late_relay(
    http: aiohttp.ClientSession, to_port: int, *, delay: float
) -> AsyncIterator[str]:
    """A hop between the servers and the bot that holds each `completed` webhook `delay` s."""

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        if b'"succeeded"' in body:
            await asyncio.sleep(delay)
        async with http.post(
            f"http://127.0.0.1:{to_port}{request.path}",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as answer:
            return web.Response(status=answer.status, text=await answer.text())

    app = web.Application(client_max_size=MAX_BYTES * 2)
    app.router.add_post("/{tail:.*}", relay)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/cog"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def webhook_pool(
    http: aiohttp.ClientSession,
    gpus: list[CogServerProcess],
    work: Path,
    *,
    callback_url: str,
    listen: int | None,
    down_after: float = DOWN_AFTER_SECONDS,
    forgotten_after: float = FORGOTTEN_AFTER_SECONDS,
) -> AsyncIterator[CogPool]:
    """A started pool (gpu-a, gpu-b...) whose webhooks go to `callback_url`, heard on `listen`."""
    pool = CogPool(
        http,
        [(f"gpu-{chr(ord('a') + n)}", server.url) for n, server in enumerate(gpus)],
        secret=derive_secret("t"),
        callback_url=callback_url,
        uploads_dir=work / "up",
        health_interval=0.2,
        request_timeout=5,
        down_after=down_after,
        forgotten_after=forgotten_after,
    )
    receiver = CogCallbacks(pool, callback_url=callback_url, max_bytes=MAX_BYTES)
    if listen is not None:
        await receiver.start("127.0.0.1", listen)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()
        await receiver.stop()


async def run_one(
    pool: CogPool, store: SQLiteStore, reporter: RecordingReporter, work: Path
) -> None:
    """Run one job on the pool to its end (delivered or failed)."""
    async with scheduler_on(store, pool, pool, reporter, work) as scheduler:
        await submit(scheduler, seed=1)
        await reporter.wait_for(lambda: reporter.failures or reporter.delivered, timeout=30)


async def test_a_completed_webhook_seconds_after_the_server_is_ready_is_taken(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    spans = tmp_path / "spans"
    server = CogServerProcess(seconds=0.3, log_dir=tmp_path, spans=spans)
    listen = free_port()
    with servers(server):
        async with (
            late_relay(http, listen, delay=3.0) as url,
            webhook_pool(http, [server], tmp_path, callback_url=url, listen=listen) as pool,
        ):
            await run_one(pool, store, reporter, tmp_path)
    assert runs(spans) == 1, "the prediction was taken as forgotten and run again"
    assert reporter.files == [SAMPLE.read_bytes()] and not reporter.failures


async def test_webhooks_that_never_reach_the_bot_fail_the_job_once_with_a_clear_reason(
    http: aiohttp.ClientSession,
    store: SQLiteStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = RecordingReporter()
    spans = tmp_path / "spans"
    server = CogServerProcess(seconds=0.3, log_dir=tmp_path, spans=spans)
    nowhere = f"http://127.0.0.1:{free_port()}/cog"  # nobody listens there
    with servers(server):
        async with webhook_pool(
            http, [server], tmp_path, callback_url=nowhere, listen=None, forgotten_after=1.0
        ) as pool:
            await run_one(pool, store, reporter, tmp_path)
    assert runs(spans) == 1, "the job was run again although no webhook could arrive"
    assert [reason for _, reason in reporter.failures] == [f"The animation failed: {UNREACHED}"]
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "COG_CALLBACK_URL" in line.message and nowhere in line.message
    assert server.url in line.message


async def test_a_stalled_server_keeps_its_job_and_is_not_counted_down(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    pair = [CogServerProcess(seconds=1.5, log_dir=tmp_path, spans=tmp_path / n) for n in "ab"]
    with servers(*pair):
        async with (
            cog_pool(http, pair, tmp_path) as pool,
            scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
        ):
            job = await submit(scheduler, seed=5)
            await reporter.wait_for(lambda: sampling(reporter), timeout=20)
            stored = await store.get(job.id)
            assert stored is not None
            stalled = pair[0 if server_of(stored.prediction_id) == "gpu-a" else 1]
            freeze(stalled, signal.SIGSTOP)  # a stalled host, a network blip
            await asyncio.sleep(3.0)
            freeze(stalled, signal.SIGCONT)
            await reporter.wait_for(lambda: reporter.delivered or reporter.failures, timeout=30)
    assert [runs(tmp_path / n) for n in "ab"].count(1) == 1, "it ran on both GPUs"
    [(delivered, _)] = reporter.delivered
    assert delivered.reruns == 0


async def test_a_server_given_up_as_down_is_told_to_cancel_the_job_run_elsewhere(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    pair = [CogServerProcess(seconds=3.0, log_dir=tmp_path, spans=tmp_path / n) for n in "ab"]
    listen = free_port()
    url = f"http://127.0.0.1:{listen}/cog"
    with servers(*pair):
        async with (
            webhook_pool(
                http, pair, tmp_path, callback_url=url, listen=listen, down_after=1.0
            ) as pool,
            scheduler_on(store, pool, pool, reporter, tmp_path) as scheduler,
        ):
            job = await submit(scheduler, seed=6)
            await reporter.wait_for(lambda: sampling(reporter), timeout=20)
            stored = await store.get(job.id)
            assert stored is not None
            doomed = 0 if server_of(stored.prediction_id) == "gpu-a" else 1
            freeze(pair[doomed], signal.SIGSTOP)
            await until(lambda: pool.servers[doomed].health == "UNREACHABLE")
            freeze(pair[doomed], signal.SIGCONT)
            await until(lambda: (pair[doomed].health() or {}).get("status") == "READY")
            await reporter.wait_for(lambda: reporter.delivered, timeout=30)
    assert runs(tmp_path / "ab"[doomed]) == 0, "the job ran to its end on both GPUs"
    assert runs(tmp_path / "ab"[1 - doomed]) == 1
    [(delivered, _)] = reporter.delivered
    assert delivered.reruns == 1


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for a condition that no event announces (a server's state), checking it often."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - a server's state announces nothing
            await asyncio.sleep(0.05)


def freeze(server: CogServerProcess, sig: signal.Signals) -> None:
    """Stop (SIGSTOP) or resume (SIGCONT) a server's processes, as a stalled host would."""
    assert server.process is not None
    os.killpg(server.process.pid, sig)


def sampling(reporter: RecordingReporter) -> bool:
    """True once a job's message shows its progress bar (its prediction runs)."""
    return any(update.stage is Stage.SAMPLING for _, update in reporter.statuses)


class GatewayInFront(LocalServer):
    """A Cog server behind a proxy that sometimes answers its health check itself (502)."""

    def __init__(self) -> None:
        super().__init__()
        self.health: tuple[int, object] = (200, self.cog("READY"))
        self.puts: list[str] = []
        self.running: dict[str, Any] | None = None  # a prediction running there already

    @staticmethod
    def cog(status: str) -> dict[str, Any]:
        """A Cog health check of one server instance."""
        return {"status": status, "setup": {"started_at": "2026-12-01T10:00:00.000000+00:00"}}

    async def start(self) -> None:
        """Answer health checks as set, and take creates."""
        app = web.Application()
        app.router.add_get("/health-check", self._health)
        app.router.add_put("/predictions/{id}", self._put)
        app.router.add_post("/predictions", self._slow_refusal)
        await self.start_app(app)

    async def _health(self, _request: web.Request) -> web.Response:
        status, body = self.health
        return web.json_response(body, status=status)

    async def _slow_refusal(self, _request: web.Request) -> web.Response:
        """Refuse a held create's input, later than a server usually does."""
        await asyncio.sleep(0.8)
        return web.json_response({"detail": "steps: must be at most 100"}, status=422)

    async def _put(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.puts.append(body["id"])
        if self.running is not None:  # a PUT of a running id answers its state
            return web.json_response({**self.running, "id": body["id"]})
        self.health = (200, self.cog("BUSY"))
        return web.json_response({"id": body["id"], "status": "starting"}, status=202)


async def test_a_health_answer_without_a_setup_time_is_no_restart(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gateway = GatewayInFront()
    await gateway.start()
    pool = CogPool(
        http,
        [("gpu-a", gateway.origin)],
        secret=derive_secret("t"),
        callback_url="http://127.0.0.1:9/cog",
        uploads_dir=tmp_path,
        health_interval=60,
    )
    try:
        await pool.start()
        current_attempt.set(Attempt("job-1-r0", INPUT))
        created = await pool.create(INPUT)
        for answer in [(502, {"detail": "bad gateway"}), (200, ["garbage"]), (200, None)]:
            gateway.health = answer
            await pool.health.check_all()
        gateway.health = (200, gateway.cog("BUSY"))
        await pool.health.check_all()
        assert pool.running(created.id) is not None, "a proxy's answer was taken as a restart"
        assert pool.servers[0].setup_started == gateway.cog("BUSY")["setup"]["started_at"]
    finally:
        await pool.stop()
        await gateway.close()


async def test_a_job_waiting_for_a_gpu_sends_the_jobs_behind_it_to_the_overflow(
    http: aiohttp.ClientSession,
    tmp_path: Path,
    prediction_api: FakePredictionAPI,
    client: PredictionClient,
) -> None:
    server = CogServerProcess(seconds=5.0, log_dir=tmp_path)
    with servers(server):
        async with cog_pool(http, [server], tmp_path) as pool:
            # No run measured yet: each takes 60 s. Waiting behind one is fine; behind two not.
            backend = RoutingBackend(pool.pool, client, overflow_after=90)
            budget = LocalApiBudget()
            metered = BudgetedBackend(backend, budget)
            current_attempt.set(Attempt("job-1-r0", INPUT))
            first = await metered.create(INPUT)
            assert server_of(first.id) == "gpu-a"
            assert not backend.has_capacity(1), "the next job would wait 60 s: it stays queued"
            current_attempt.set(Attempt("job-2-r1", INPUT))  # a rerun: started before capacity
            with pytest.raises(AtCapacity):
                await metered.create(INPUT)
            # The scheduler's question and the create's answer are the same measure.
            assert backend.has_capacity(2)
            current_attempt.set(Attempt("job-3-r0", INPUT))
            overflowed = await metered.create(INPUT)
            current_attempt.set(Attempt("job-2-r1", INPUT))
            with pytest.raises(AtCapacity):
                await metered.create(INPUT)  # the waiting job keeps its place at the front
    assert server_of(overflowed.id) is None and prediction_api.creates == 1
    assert budget.spent[ApiUse.CREATE] == 1, "requests to the bot's own GPUs counted as Replicate's"


async def test_a_freed_gpu_wakes_the_jobs_waiting_for_one() -> None:
    signals = JobSignals()
    waiting = asyncio.create_task(signals.pause_for_capacity(60, job_id=1))
    other = asyncio.create_task(signals.pause(60, job_id=2))
    await asyncio.sleep(0)
    signals.capacity_freed()
    assert await asyncio.wait_for(waiting, timeout=1) is True
    assert not other.done(), "a job not waiting for a GPU was woken"
    other.cancel()


async def test_ended_outputs_are_kept_in_files_not_in_memory(
    http: aiohttp.ClientSession, store: SQLiteStore, tmp_path: Path
) -> None:
    reporter = RecordingReporter()
    server = CogServerProcess(seconds=0.1, log_dir=tmp_path)
    with servers(server):
        async with (
            cog_pool(http, [server], tmp_path) as pool,
            scheduler_on(store, pool.pool, pool.pool, reporter, tmp_path) as scheduler,
        ):
            await submit(scheduler, seed=1)
            await reporter.wait_for(lambda: reporter.delivered, timeout=30)
            [(_, result)] = reporter.delivered
            url = await file_output(pool.pool, result.prediction_id)
            size = await pool.pool.download_to(url, tmp_path / "again", max_bytes=MAX_BYTES)
    assert (tmp_path / "again").read_bytes() == SAMPLE.read_bytes() == reporter.files[0]
    assert size == len(SAMPLE.read_bytes())


async def file_output(pool: CogPool, prediction_id: str) -> str:
    """The prediction's output once it names a file, not a `data:` URI (nothing announces it)."""
    async with asyncio.timeout(10):
        while True:
            [url] = (await pool.get(prediction_id)).output_urls
            if not url.startswith("data:"):
                return url
            await asyncio.sleep(0.05)


def test_ended_predictions_are_forgotten_with_their_files_after_a_while(tmp_path: Path) -> None:
    now = [0.0]
    ended = EndedPredictions(keep=10, ttl=60, clock=lambda: now[0])
    first, second = (
        Tracked.placed(
            CogPredictionId("gpu-a", f"job-{n}-r0"),
            server_id=f"s{n}",
            token=f"t{n}",
            api_input=INPUT,
            held=False,
        )
        for n in (1, 2)
    )
    (tmp_path / "t1").mkdir()
    output = tmp_path / "t1" / "output-0.mp4"
    output.write_bytes(b"mp4")
    first.files[output.as_uri()] = output
    ended.add(first)
    now[0] = 61.0
    ended.add(second)
    assert ended.get(first.state.id) is None and ended.get(second.state.id) is second
    assert not output.exists() and not (tmp_path / "t1").exists()


async def test_a_prediction_of_the_same_id_with_another_input_is_not_adopted(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gateway = GatewayInFront()
    await gateway.start()
    pool = CogPool(
        http,
        [("gpu-a", gateway.origin)],
        secret=derive_secret("t"),
        callback_url="http://127.0.0.1:9/cog",
        uploads_dir=tmp_path,
        health_interval=60,
    )
    try:
        gateway.health = (200, gateway.cog("BUSY"))
        await pool.start()
        current_attempt.set(Attempt("job-1-r0", INPUT))
        # Another bot (a fresh database, the same token) runs its job 1 there.
        gateway.running = {"id": "x", "status": "processing", "input": {**INPUT, "seed": 2}}
        assert await pool.find(INPUT, created_after=0) is None
        gateway.running = {**gateway.running, "input": INPUT}
        found = await pool.find(INPUT, created_after=0)
        assert found is not None and found.status == "processing"
    finally:
        await pool.stop()
        await gateway.close()


async def test_an_input_refused_after_the_accept_window_fails_with_the_servers_reason(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gateway = GatewayInFront()
    await gateway.start()
    pool = CogPool(
        http,
        [("gpu-a", gateway.origin)],
        secret=derive_secret("t"),
        callback_url=None,
        uploads_dir=tmp_path,
        health_interval=60,
    )
    ended = asyncio.Event()
    pool.on_push = lambda state: ended.set() if state.is_terminal else None
    try:
        await pool.start()
        current_attempt.set(Attempt("job-1-r0", INPUT))
        created = await pool.create(INPUT)
        assert created.status == "processing"  # still open after the window: taken, it seemed
        await asyncio.wait_for(ended.wait(), timeout=5)
        state = await pool.get(created.id)
    finally:
        await pool.stop()
        await gateway.close()
    assert state.status == "failed" and not state.lost, "a refused input would be run again"
    assert state.error == "steps: must be at most 100"
