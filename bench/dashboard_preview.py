"""Dashboard preview: the Grafana dashboard's panels drawn from a real run, for the README.

    python -m bench.dashboard_preview --minutes 4 --out docs/dashboard-preview.png

Runs the real bot (`python -m bot`) against the fakes of tests/fakes, with webhooks, and a
steady stream of /animate from several members of two servers (a tenth of the predictions
fail, a fifth ask for a GIF, and Discord answers a few edits with 429), has a local
Prometheus (the `prometheus` binary: Debian's package, say) scrape its /metrics every 2 s,
then evaluates every expression of docs/grafana-dashboard.json with Prometheus' query_range
API and draws each panel where the dashboard places it. Grafana itself does not run here:
this is matplotlib drawing the same queries over the same scraped data, in Grafana's dark
colours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tests.e2e.harness import ROOT, BotProcess, bot_environment
from tests.fakes.discord import FakeDiscord
from tests.fakes.predictions import Behaviour, FakePredictionAPI

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
GUILDS = (700_000_000_000_000_001, 700_000_000_000_000_002)
CHANNELS = (710_000_000_000_000_001, 710_000_000_000_000_002)
MEMBERS = tuple(720_000_000_000_000_000 + i for i in range(8))
SCRAPE_SECONDS = 2
RATE_WINDOW = "20s"  # what Grafana's $__rate_interval becomes at this scrape interval
# Grafana's dark theme and its classic palette.
PAGE, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a")


def _free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _get_json(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    """GET a JSON document."""
    async with http.get(url, params=params) as response:
        response.raise_for_status()
        return await response.json()


async def _busy(http: aiohttp.ClientSession, metrics_url: str) -> float:
    """Jobs queued and running now, from the bot's own /metrics."""
    async with http.get(metrics_url) as response:
        text = await response.text()
    found = re.findall(r"^animatebot_jobs_(?:queued|running) (\S+)$", text, re.MULTILINE)
    return sum(float(value) for value in found)


async def run(minutes: float, out: Path, seed: int) -> None:
    """Drive the bot, scrape it with Prometheus, and draw the dashboard's panels."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("needs the prometheus binary on PATH (apt-get install prometheus)")
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="dashboard-preview-"))
    # Real time: the bot times its polls by the durations the logs report, as in production.
    discord, api = FakeDiscord(), FakePredictionAPI()
    api.behaviour_for = lambda _input: Behaviour(
        queue_time=rng.uniform(0.5, 4),
        step_time=rng.uniform(0.1, 0.5),
        outcome="failed" if rng.random() < 0.1 else "succeeded",
    )
    await discord.start()
    await api.start()
    for guild, channel in zip(GUILDS, CHANNELS, strict=True):
        discord.add_guild(guild, name=f"guild-{guild % 10}", channel_ids=[channel])
        for member in MEMBERS:
            discord.add_member(guild, member, name=f"member-{member % 100}")
    port = _free_port()  # webhooks and metrics share the listener
    env = bot_environment(
        discord,
        api,
        workdir / "bot.sqlite3",
        guild_ids=GUILDS,
        extra={
            "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks/replicate",
            "WEBHOOK_LISTEN_HOST": "127.0.0.1",
            "WEBHOOK_LISTEN_PORT": str(port),
            "METRICS_LISTEN_PORT": str(port),
            "MAX_RUNNING_TOTAL": "4",
            "MAX_RUNNING_PER_GUILD": "2",
            "MAX_QUEUED_PER_MEMBER": "5",
        },
    )
    bot = BotProcess(env, workdir)
    await bot.start()
    await discord.wait_until_ready(timeout=30)
    prom_port = _free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n"
        f"scrape_configs:\n  - job_name: animatebot\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    scraper = await asyncio.create_subprocess_exec(
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"{prom}/-/ready") as ready:
                            if ready.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            start = time.time()
            sent = 0
            while time.time() - start < minutes * 60:
                guild = rng.randrange(len(GUILDS))
                await discord.invoke_command(
                    "animate",
                    {
                        "prompt": f"preview {sent}",
                        "steps": rng.choice((15, 25, 30)),
                        "format": "gif" if rng.random() < 0.2 else "mp4",  # a conversion
                    },
                    guild_id=GUILDS[guild],
                    channel_id=CHANNELS[guild],
                    user_id=rng.choice(MEMBERS),
                )
                sent += 1
                if sent % 25 == 0:
                    discord.fail_next(
                        "PATCH",
                        r"/channels/\d+/messages/\d+$",
                        status=429,
                        body={"message": "You are being rate limited.", "retry_after": 0.3},
                        headers={"Retry-After": "0.3", "X-RateLimit-Scope": "user"},
                    )
                await asyncio.sleep(rng.expovariate(1 / 2.5))
            async with asyncio.timeout(180):
                while True:  # the bot is another process: nothing to wait on but its figures
                    if not await _busy(http, f"http://127.0.0.1:{port}/metrics"):
                        break
                    await asyncio.sleep(1)
            await asyncio.sleep(4 * SCRAPE_SECONDS)
            end = time.time()
            series = await _query_panels(http, prom, start, end)
    except BaseException:
        print(bot.log()[-6000:])
        raise
    finally:
        scraper.terminate()
        await scraper.wait()
        await bot.stop()
        await api.close()
        await discord.close()
        shutil.rmtree(workdir, ignore_errors=True)
    _draw(series, start, end, out)
    print(f"{sent} requests over {minutes:g} min; wrote {out}")


async def _query_panels(
    http: aiohttp.ClientSession, prom: str, start: float, end: float
) -> list[tuple[dict[str, Any], list[tuple[str, list[tuple[float, float]]]]]]:
    """Every panel with its targets' series: (legend, [(time, value)]) each."""
    dashboard = json.loads(DASHBOARD.read_text())
    drawn = []
    for panel in dashboard["panels"]:
        lines: list[tuple[str, list[tuple[float, float]]]] = []
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW)
            answer = await _get_json(
                http,
                f"{prom}/api/v1/query_range",
                query=expr,
                start=str(start),
                end=str(end),
                step="5",
            )
            for result in answer["data"]["result"]:
                legend = re.sub(
                    r"\{\{(\w+)\}\}",
                    lambda m, labels=result["metric"]: labels.get(m.group(1), ""),
                    target.get("legendFormat") or "",
                ).strip()
                points = [(float(t), float(v)) for t, v in result["values"] if v != "NaN"]
                lines.append((legend or expr[:30], points))
        drawn.append((panel, lines))
    return drawn


def _draw(
    panels: list[tuple[dict[str, Any], list[tuple[str, list[tuple[float, float]]]]]],
    start: float,
    end: float,
    out: Path,
) -> None:
    """Lay the panels out on Grafana's 24-column grid and save a PNG."""
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p, _ in panels)
    figure = Figure(figsize=(16, rows * 0.26), dpi=100, facecolor=PAGE)
    FigureCanvasAgg(figure)
    for panel, lines in panels:
        grid = panel["gridPos"]
        left, width = grid["x"] / 24 + 0.006, grid["w"] / 24 - 0.012
        bottom = 1 - (grid["y"] + grid["h"]) / rows + 0.012
        height = grid["h"] / rows - 0.024
        box = figure.add_axes((left, bottom, width, height))
        box.set_facecolor(PANEL)
        box.set_xticks([])
        box.set_yticks([])
        for spine in box.spines.values():
            spine.set_color(GRID)
        box.set_title(panel["title"], color=TEXT, fontsize=9, loc="left", pad=4)
        if panel["type"] == "stat":
            last = [points[-1][1] for _, points in lines if points]
            down = any(value >= 1 for value in last)
            box.set_facecolor("#c4162a" if down else "#37872d")
            names = ", ".join(legend for legend, _ in lines) or "no data"
            box.text(
                0.5, 0.5, f"{'OUTAGE' if down else 'up'}   ({names})", color="white",
                ha="center", va="center", fontsize=14, transform=box.transAxes,
            )  # fmt: skip
            continue
        plot = figure.add_axes((left + 0.03, bottom + 0.025, width - 0.04, height - 0.06))
        plot.set_facecolor(PANEL)
        for index, (legend, points) in enumerate(lines):
            if points:
                xs = [(t - start) / 60 for t, _ in points]
                plot.plot(xs, [v for _, v in points], color=PALETTE[index % len(PALETTE)],
                          linewidth=1.2, label=legend[:28])  # fmt: skip
        plot.set_xlim(0, (end - start) / 60)
        plot.tick_params(colors=TEXT, labelsize=7)
        plot.grid(color=GRID, linewidth=0.5)
        for spine in plot.spines.values():
            spine.set_visible(False)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        plot.set_xlabel("minutes", color=TEXT, fontsize=7, labelpad=1)
        if unit:
            plot.set_ylabel(unit, color=TEXT, fontsize=7)
        if lines:
            plot.legend(fontsize=6, ncols=3, loc="upper left", frameon=False, labelcolor=TEXT)
        else:
            plot.text(0.5, 0.5, "no data", color=TEXT, ha="center", transform=plot.transAxes)
    figure.savefig(out, facecolor=PAGE)


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description="Draw the dashboard's panels from a real run.")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard-preview.png")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(run(args.minutes, args.out, args.seed))


if __name__ == "__main__":
    main()
