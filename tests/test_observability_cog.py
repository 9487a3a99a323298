"""Metrics of a Cog pool: its requests and its jobs' figures carry each server's own name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app.monitoring import label_by_cog_server
from bot.backends.cog.ids import derive_secret
from bot.backends.cog.pool import CogPool
from bot.observability.metrics import BotMetrics
from bot.storage.sqlite import SQLiteStore
from tests.cog_servers import CogServerProcess, start_all
from tests.scheduling import RecordingReporter, submit
from tests.scheduling import make_scheduler as scheduler_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CogServerProcess]:
    """One real Cog server whose predictions take 0.3 s."""
    [started] = start_all([CogServerProcess(seconds=0.3, log_dir=tmp_path_factory.mktemp("cog"))])
    yield started
    started.stop()


def _samples(metrics: BotMetrics, family: str) -> list[tuple[dict[str, str], float]]:
    """A family's `_total` (or plain) samples as (labels, value)."""
    text = metrics.render()[0].decode()
    return [
        (sample.labels, sample.value)
        for found in text_string_to_metric_families(text)
        if found.name == family
        for sample in found.samples
        if not sample.name.endswith("_created")
    ]


async def test_a_job_on_a_cog_server_is_counted_under_the_servers_name(
    http: aiohttp.ClientSession, store: SQLiteStore, server: CogServerProcess, tmp_path: Path
) -> None:
    server.wait_ready()
    metrics = BotMetrics()
    pool = CogPool(
        http,
        [("gpu-a", server.url)],
        secret=derive_secret("test bot token"),
        callback_url=None,  # held requests: the answer is the end
        uploads_dir=tmp_path / "uploads",
        health_interval=0.2,
        request_timeout=5,
        hold_timeout=60,
        metrics=metrics,
    )
    await pool.start()
    reporter = RecordingReporter()
    scheduler = scheduler_for(store, pool, work_root=tmp_path / "jobs")
    label_by_cog_server(scheduler.metrics, pool.servers)
    scheduler.attach(reporter)
    pool.on_push = scheduler.push
    pool.on_capacity = scheduler.capacity_changed
    await scheduler.start()
    try:
        await submit(scheduler, guild=1, user=1, seed=7)
        await reporter.wait_for(lambda: reporter.delivered, timeout=30)
        await scheduler.wait_idle()
    finally:
        await scheduler.stop()
        await pool.stop()

    requests = _samples(metrics, "animatebot_prediction_api_requests")
    assert requests and all(labels["backend"] == "gpu-a" for labels, _ in requests)
    by_kind = {
        labels["kind"]: value for labels, value in requests if labels["status_class"] == "2xx"
    }
    assert by_kind.get("create") == 1 and by_kind.get("health", 0) >= 1
    billed = _samples(scheduler.metrics, "animatebot_gpu_seconds_billed")
    assert [labels["backend"] for labels, value in billed if value > 0] == ["gpu-a"]
    outage = dict(
        (labels["backend"], value)
        for labels, value in _samples(scheduler.metrics, "animatebot_backend_outage")
    )
    assert outage["gpu-a"] == 0
