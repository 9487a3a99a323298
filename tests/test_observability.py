"""Metrics, health reports and JSON logs, on their real parts (a real aiohttp server)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.app import healthcheck
from bot.app.settings import Settings, SettingsError, load_settings
from bot.backends.base import Prediction
from bot.backends.webhooks import SigningKey, WebhookReceiver, WebhookVerifier
from bot.core import redaction
from bot.core.budgets import DeferralCountingBudget, EditKind, LocalDiscordBudget
from bot.core.relay import StatusRelay
from bot.observability.discord_requests import request_kind
from bot.observability.health import PROBE_TIMEOUT, CheckResult, HealthReport, gateway_result
from bot.observability.logs import JsonFormatter, bind_job, bind_prediction
from bot.observability.metrics import BotMetrics, status_class
from bot.observability.server import MonitoringEndpoints

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
PREDICTION = {"id": "p1", "status": "succeeded", "output": ["https://replicate.delivery/x.mp4"]}


async def _ok() -> CheckResult:
    """A check that passes."""
    return CheckResult(True, "fine")


async def test_metrics_share_the_webhook_listener_and_count_its_deliveries() -> None:
    metrics = BotMetrics()
    taken: list[Prediction] = []

    async def secret() -> str:
        """The account's signing secret."""
        return SECRET

    receiver = WebhookReceiver(
        WebhookVerifier(secret), taken.append, public_url="http://bot.example/hook", metrics=metrics
    )
    MonitoringEndpoints(metrics, HealthReport({"x": _ok}), HealthReport({})).install(receiver.app)
    await receiver.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{receiver.port}"
    body = json.dumps(PREDICTION).encode()
    stamp = str(int(time.time()))
    signed = {
        "webhook-id": "msg_1",
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + SigningKey.from_secret(SECRET).sign("msg_1", stamp, body),
    }
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/hook", data=body) as unsigned:
                assert unsigned.status == 400
            for _ in range(2):  # the second is a replay
                async with http.post(f"{base}/hook", data=body, headers=signed) as good:
                    assert good.status == 200
            async with http.get(f"{base}/metrics") as scraped:
                assert scraped.status == 200
                assert scraped.headers["Content-Type"].startswith("text/plain")
                text = await scraped.text()
            async with http.get(f"{base}/healthz") as health:
                assert health.status == 200
                assert await health.json() == {"status": "ok", "checks": {"x": "fine"}}
            async with http.get(f"{base}/readyz") as ready:
                assert ready.status == 200
    finally:
        await receiver.stop()
    [family] = [
        f for f in text_string_to_metric_families(text) if f.name == "animatebot_webhook_deliveries"
    ]
    counts = {
        (s.labels["result"], s.labels["reason"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counts == {
        ("refused", "malformed"): 1,
        ("accepted", "taken"): 1,
        ("accepted", "replay"): 1,
    }
    assert [p.id for p in taken] == ["p1"]


def test_two_bots_in_one_process_keep_their_own_figures() -> None:
    first, second = BotMetrics(), BotMetrics()
    first.job_finished("done")
    first.api_request("create", 201)
    assert b'animatebot_jobs_finished_total{outcome="done",reason="none"} 1.0' in first.render()[0]
    assert b"animatebot_jobs_finished_total{" not in second.render()[0]


def test_status_classes_and_discord_request_kinds_are_a_short_fixed_list() -> None:
    assert [status_class(s) for s in (200, 204, 301, 404, 429, 503, None)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "429",
        "5xx",
        "error",
    ]
    api = "https://discord.com/api/v10"
    assert request_kind("PATCH", f"{api}/channels/81/messages/82") == "message_edit"
    assert request_kind("POST", f"{api}/channels/81/messages") == "message_create"
    assert request_kind("POST", f"{api}/interactions/5/tok.en-x/callback") == "interaction_response"
    assert request_kind("PATCH", f"{api}/webhooks/1/tok/messages/@original") == "interaction_edit"
    assert request_kind("PUT", f"{api}/applications/1/guilds/2/commands") == "commands_sync"
    assert request_kind("GET", "http://127.0.0.1:9/prefix/api/v10/users/@me") == "login"
    assert request_kind("POST", f"{api}/guilds/2/bans/3") == "other"


async def test_a_health_report_times_out_catches_errors_and_caches_briefly() -> None:
    calls = 0
    now = [0.0]

    async def counted() -> CheckResult:
        """Pass, counting the calls."""
        nonlocal calls
        calls += 1
        return CheckResult(True, "fine")

    async def broken() -> CheckResult:
        """Fail the way a dropped connection does."""
        raise ConnectionResetError("reset by peer")

    async def stuck() -> CheckResult:
        """Never answer."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    report = HealthReport(
        {"counted": counted, "broken": broken, "stuck": stuck},
        timeout=0.05,
        cache_seconds=1.0,
        clock=lambda: now[0],
    )
    results = await report.results()
    assert results["counted"].ok and not results["broken"].ok and not results["stuck"].ok
    assert results["broken"].detail == "ConnectionResetError: reset by peer"
    assert results["stuck"].detail == "no answer within 0.05 s"
    await report.results()
    assert calls == 1  # cached
    now[0] = 1.5
    await report.results()
    assert calls == 2


async def test_a_failing_check_tells_its_error_with_secrets_masked() -> None:
    secret = "r8_health-secret-value"

    async def leaky() -> CheckResult:
        """Fail with credentials in the message, as a refused HTTP call may."""
        raise ConnectionError(f"refused token {secret}; Authorization: Bearer abc123xyz")

    redaction.register_secret(secret)
    try:
        results = await HealthReport({"leaky": leaky}, mask=redaction.redact).results()
    finally:
        redaction.forget_secrets()
    detail = results["leaky"].detail
    assert detail.startswith("ConnectionError: refused token ") and redaction.MASK in detail
    assert secret not in detail and "abc123xyz" not in detail


def test_the_gateway_is_well_only_with_every_shard_of_this_process_connected() -> None:
    assert not gateway_result(None, []).ok
    assert gateway_result([0, 1], [0, 1]).ok
    down = gateway_result([2, 3], [2])
    assert not down.ok and down.detail == "shard 3 not connected"


async def test_json_lines_carry_the_ids_bound_in_their_task_and_mask_secrets() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json_lines")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    secret = "sk-very-secret-token-123"
    redaction.install([handler], [secret])

    async def job() -> None:
        """Log as a job's task does."""
        bind_job(7, 800, None)
        logger.info("job 7 started")
        bind_prediction("pred-1")
        logger.warning("job 7 sent Authorization: Bearer %s", secret)

    try:
        await asyncio.create_task(job())  # a task of its own, as each job runs
        logger.info("not about a job")
    finally:
        logger.removeHandler(handler)
        redaction.forget_secrets()
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["job_id"] == 7 and first["guild_id"] == 800 and "prediction_id" not in first
    assert second["prediction_id"] == "pred-1" and second["level"] == "WARNING"
    assert secret not in second["message"] and redaction.MASK in second["message"]
    assert "job_id" not in third  # another task, nothing bound
    assert {"time", "level", "logger", "message"} <= third.keys()


def test_a_lone_surrogate_still_gives_one_json_line_per_record() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # as stderr is
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json_surrogate")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    odd = "a\ud800b Leuchtturm — 灯台 🌊"
    try:
        logger.info("prompt %s", odd)
        logger.info("after")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in raw.getvalue().decode().splitlines())
    assert first["message"] == f"prompt {odd}" and second["message"] == "after"


def test_monitoring_settings_default_off_and_refuse_an_unknown_log_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "t" * 10)
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r" * 10)
    monkeypatch.setenv("METRICS_LISTEN_PORT", "")
    settings: Settings = load_settings(env_file=None)
    assert settings.metrics_listen_port is None
    assert settings.metrics_listen_host == "127.0.0.1"
    assert settings.log_format == "text"
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert load_settings(env_file=None).log_format == "json"
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT is invalid"):
        load_settings(env_file=None)


async def test_status_edits_dropped_unsent_count_as_coalesced_or_settled() -> None:
    metrics = BotMetrics()
    release = asyncio.Event()
    sent: list[str] = []
    arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def send(_key: int, value: str) -> None:
        """Show a value, slowly (Discord's rate limit)."""
        sent.append(value)
        arrived[value].set()
        await release.wait()

    relay: StatusRelay[int, str] = StatusRelay(send, interval=0)
    relay.on_shed = metrics.status_edit  # as the scheduler wires it
    relay.publish(1, "queued")
    await arrived["queued"].wait()
    relay.publish(1, "10%")  # waits behind the send in flight...
    relay.publish(1, "20%")  # ...and is replaced unsent
    relay.publish(1, "30%")
    release.set()
    await arrived["30%"].wait()
    assert sent == ["queued", "30%"]
    relay.publish(1, "40%")
    await relay.settle(1)  # a final word: 40% is never shown
    await relay.close()
    text = metrics.render()[0]
    assert b'animatebot_status_edits_total{result="coalesced"} 2.0' in text
    assert b'animatebot_status_edits_total{result="settled"} 1.0' in text


async def test_edits_the_discord_budget_holds_back_are_counted_by_kind() -> None:
    metrics = BotMetrics()
    local = LocalDiscordBudget(1, clock=lambda: 0.0)  # room for one edit in the second
    budget = DeferralCountingBudget(local, metrics.status_edit_deferred)
    assert await budget.try_edit(EditKind.STAGE, waited=0)
    await budget.sending()
    assert not await budget.try_edit(EditKind.PROGRESS, waited=0)
    assert not await budget.try_edit(EditKind.STAGE, waited=0)
    assert not await budget.try_edit(EditKind.STAGE, waited=0)
    text = metrics.render()[0]
    assert b'animatebot_status_edits_deferred_total{kind="stage"} 2.0' in text
    assert b'animatebot_status_edits_deferred_total{kind="progress"} 1.0' in text
    assert local.refused[EditKind.STAGE] == 2


def test_the_container_healthcheck_asks_healthz_with_the_standard_library() -> None:
    dockerfile = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "bot.app.healthcheck"]' in dockerfile
    assert "curl" not in dockerfile
    # The bot answers a slow check within its time-out, before the asker and Docker give up.
    docker_timeout = re.search(r"HEALTHCHECK .*--timeout=(\d+)s", dockerfile)
    assert docker_timeout is not None
    assert PROBE_TIMEOUT + 1 < healthcheck.TIMEOUT_SECONDS < float(docker_timeout.group(1))


async def test_a_task_started_by_a_job_does_not_borrow_its_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json_inheritance")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    started: list[asyncio.Task[None]] = []

    async def shared_worker() -> None:
        """A long-lived task (a relay) that happens to be started by a job."""
        logger.info("status update for job 9 failed")

    async def job() -> None:
        """A job's task, which starts the worker."""
        bind_job(3, 800)
        started.append(asyncio.create_task(shared_worker()))
        logger.info("job 3 running")

    try:
        await asyncio.create_task(job())
        await started[0]
    finally:
        logger.removeHandler(handler)
    own, borrowed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert own["job_id"] == 3
    assert "job_id" not in borrowed


def test_the_monitoring_compose_file_wires_the_bot_prometheus_and_the_dashboard() -> None:
    root = Path(__file__).resolve().parent.parent
    compose = yaml.safe_load((root / "docker-compose.monitoring.yml").read_text())
    services = compose["services"]
    bot_env = services["bot"]["environment"]
    port = bot_env["METRICS_LISTEN_PORT"]
    assert bot_env["METRICS_LISTEN_HOST"] == "0.0.0.0"  # reachable from the prometheus service
    scrape = yaml.safe_load((root / "monitoring" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"bot:{port}"]
    provisioning = root / "monitoring" / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "animatebot.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert Path(mounts["./docs/grafana-dashboard.json"]).parent == Path(folder)
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = (provisioning / "datasources" / "prometheus.yml").read_text()
    assert yaml.safe_load(datasources)["datasources"][0]["url"] == "http://prometheus:9090"
