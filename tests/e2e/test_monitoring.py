"""Monitoring end to end: /metrics after real jobs, /healthz and /readyz, JSON logs, the chart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bot.core.redaction import MASK
from bot.observability.discord_requests import request_kind
from tests.e2e.conftest import ALICE, CHANNEL_A, CHANNEL_B, GUILD_A, GUILD_B, World
from tests.fakes.discord import DEFAULT_MEMBER_PERMISSIONS, FakeAttachment

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
LISTENING = re.compile(r"serving /metrics, /healthz and /readyz on [^ ]+:(\d+)")
# Label names the bot may use: each takes values from a short fixed list.
BOUNDED_LABELS = {"outcome", "reason", "backend", "kind", "status_class", "result", "format", "le"}
OWNER = 900_000_000_000_000_010
MANAGE_GUILD = 1 << 5
PROMPT = "a lighthouse in a storm, oil painting"

monitored = pytest.mark.bot_env(METRICS_LISTEN_PORT="0")


async def _port(world: World, timeout: float = 20) -> int:
    """The port the bot's monitoring listener took (METRICS_LISTEN_PORT=0: any free one)."""
    async with asyncio.timeout(timeout):
        while True:
            if found := LISTENING.search(world.bot.log()):
                return int(found.group(1))
            await asyncio.sleep(0.05)  # the log belongs to another process: nothing to wait on


async def _get(port: int, path: str) -> tuple[int, str]:
    """GET a path of the monitoring listener; return the status and the body."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def _scrape(port: int) -> dict[str, list[Sample]]:
    """Scrape /metrics and parse it with prometheus_client's own parser, by family."""
    status, text = await _get(port, "/metrics")
    assert status == 200
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _value(families: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The sum of a family's samples named `name` whose labels include `labels`."""
    family = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
    return sum(
        sample.value
        for sample in families.get(family, [])
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Wait until an async predicate holds (the figures live in another process)."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def _finish_job(world: World, prompt: str, **where: int) -> None:
    """Run one /animate to its posted result."""
    interaction = await world.animate(prompt, **where)
    await world.result_for(await world.request_message(interaction))


@monitored
async def test_metrics_count_exactly_what_one_job_did_and_name_no_guild_member_or_prompt(
    world: World,
) -> None:
    port = await _port(world)
    await _finish_job(world, PROMPT)
    row = await world.job_reaches("done")
    api_kinds = world.api.requests_by_kind()

    async def settled() -> bool:
        """True once the job's end shows (status edits may land a moment after the post)."""
        families = await _scrape(port)
        done = _value(families, "animatebot_jobs_finished_total", outcome="done")
        return done == 1 and _value(families, "animatebot_jobs_running") == 0

    await _eventually(settled)
    families = await _scrape(port)

    assert _value(families, "animatebot_jobs_finished_total") == 1
    assert _value(families, "animatebot_jobs_queued") == 0
    assert _value(families, "animatebot_queue_wait_seconds_count") == 1
    assert _value(families, "animatebot_prediction_run_seconds_count", backend="replicate") == 1
    assert _value(families, "animatebot_delivery_lag_seconds_count") == 1
    assert _value(families, "animatebot_gpu_seconds_billed_total", backend="replicate") == (
        pytest.approx(row["predict_time"])
    )
    assert _value(families, "animatebot_backend_outage", backend="replicate") == 0
    # Every request the fake API saw (files aside) was counted, by kind; all answered 2xx.
    counted = {
        (s.labels["kind"], s.labels["status_class"]): s.value
        for s in families["animatebot_prediction_api_requests"]
        if s.name.endswith("_total")
    }
    assert counted.get(("create", "2xx")) == api_kinds["create"] == 1
    assert counted.get(("get", "2xx"), 0) == api_kinds["poll"]
    assert sum(counted.values()) == sum(n for k, n in api_kinds.items() if k != "download")
    # Discord: the fake's own record of REST requests, by the bot's names for them.
    seen: dict[str, int] = {}
    for request in world.discord.requests:
        kind = request_kind(request.method, request.path)
        seen[kind] = seen.get(kind, 0) + 1
    for kind in ("interaction_response", "message_create", "commands_sync"):
        assert _value(families, "animatebot_discord_requests_total", kind=kind) == seen[kind]
    assert _value(families, "animatebot_discord_rate_limited_total") == 0
    assert _value(families, "animatebot_status_edits_total", result="sent") >= 1

    forbidden = {str(GUILD_A), str(GUILD_B), str(ALICE), str(CHANNEL_A), str(CHANNEL_B)}
    for samples in families.values():
        for sample in samples:
            assert set(sample.labels) <= BOUNDED_LABELS, sample
            for value in sample.labels.values():
                assert not any(ident in value for ident in forbidden), sample
                assert "lighthouse" not in value and "storm" not in value, sample

    # The dashboard's every expression names a family this bot exports.
    dashboard = json.loads(DASHBOARD.read_text())
    exported = set(families)
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert expressions
    for expr in expressions:
        names = set(re.findall(r"\banimatebot_[a-z_]+", expr))
        assert names, expr
        for name in names:
            assert re.sub(r"_(total|bucket|count|sum)$", "", name) in exported, (name, expr)


@monitored
async def test_readyz_and_healthz_turn_503_on_each_fault_and_back_to_200(
    world: World, tmp_path: Path
) -> None:
    port = await _port(world)

    async def answers(path: str, status: int, part: str = "") -> bool:
        """True once `path` answers `status` (with `part` in its body)."""
        code, body = await _get(port, path)
        return code == status and part in body

    await _eventually(lambda: answers("/readyz", 200))
    await _eventually(lambda: answers("/healthz", 200, '"status": "ok"'))
    assert await _container_healthcheck(port) == 0

    # The prediction API stops answering its cheapest request.
    fault = world.api.inject("GET", r"/v1/predictions", drop=True, times=10_000)
    await _eventually(lambda: answers("/healthz", 503, "backend"))
    world.api.faults.remove(fault)
    await _eventually(lambda: answers("/healthz", 200))

    # The database file (and its write-ahead log) turn read-only.
    database = Path(world.bot.env["DATABASE_PATH"])
    with _read_only(database, database.with_name(database.name + "-wal")):
        await _eventually(lambda: answers("/healthz", 503, "database"))
        _, body = await _get(port, "/healthz")
        assert json.loads(body)["checks"]["gateway"].endswith("connected")
        assert await _container_healthcheck(port) == 1
    await _eventually(lambda: answers("/healthz", 200))

    # The gateway drops and cannot be reached again for a while.
    world.discord.hold_gateway()
    await world.discord.disconnect_gateway()
    await _eventually(lambda: answers("/healthz", 503, "gateway"))
    world.discord.release_gateway()
    await _eventually(lambda: answers("/healthz", 200), timeout=30)


async def _container_healthcheck(port: int) -> int:
    """Run the Dockerfile's HEALTHCHECK command against the bot; return its exit code."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.app.healthcheck",
        env={**os.environ, "PYTHONPATH": str(ROOT), "METRICS_LISTEN_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


@contextlib.contextmanager
def _read_only(*files: Path) -> Iterator[None]:
    """Make files read-only for real: as root, the immutable attribute; else the mode bits."""
    present = [file for file in files if file.exists()]
    if os.geteuid() != 0:
        for file in present:
            file.chmod(0o444)
        try:
            yield
        finally:
            for file in present:
                file.chmod(0o644)
        return
    # Root writes through any mode bits; the immutable attribute stops even root.
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: no way to make the database read-only")
    made = subprocess.run(
        [chattr, "+i", *map(str, present)], check=False, capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, present)], check=True)


# DEBUG: discord.py then logs interaction payloads and webhook URLs, which carry tokens.
@pytest.mark.bot_env(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
async def test_json_logs_parse_line_by_line_carry_the_job_and_guild_and_no_token(
    world: World,
) -> None:
    await _finish_job(world, PROMPT)
    row = await world.job_reaches("done")
    await world.bot.stop()
    lines = [line for line in world.bot.log().splitlines() if line and not line.startswith("-----")]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
    about_the_job = [e for e in entries if re.match(r"job 1\b", e["message"])]
    assert any("delivered" in e["message"] for e in about_the_job)
    for entry in about_the_job:
        assert entry["job_id"] == 1 and entry["guild_id"] == GUILD_A, entry
    delivered = next(e for e in about_the_job if "delivered" in e["message"])
    assert delivered["prediction_id"] == row["prediction_id"]
    text = world.bot.log()
    assert world.discord.token not in text and world.api.token not in text
    interaction_tokens = [i.token for i in world.discord.interactions.values()]
    assert interaction_tokens
    assert not any(token in text for token in interaction_tokens)
    assert MASK in text  # they were there, masked


async def test_animate_usage_attaches_a_chart_once_there_is_usage(world: World) -> None:
    world.discord.add_member(
        GUILD_A, OWNER, name="owner", permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_GUILD
    )

    async def usage() -> list[FakeAttachment]:
        """Ask for the usage as the owner; return the files attached to the private answer."""
        interaction = await world.discord.invoke_command(
            "animate-usage", {}, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=OWNER
        )
        original = await world.discord.wait_for(lambda: interaction.original)
        assert original.ephemeral
        return list(original.attachments)

    assert await usage() == []  # nothing used yet: no chart
    await _finish_job(world, PROMPT)
    await world.job_reaches("done")
    attachments = await usage()
    assert [a.filename for a in attachments] == ["animate-usage.png"]
    assert attachments[0].data.startswith(b"\x89PNG\r\n\x1a\n")
    assert attachments[0].size > 10_000
