"""The bot's own GPUs: how busy a pool of Cog servers is kept, with webhooks and without.

    python -m bench.cog_pool --servers 3 --seconds 1 --jobs 45

For each mode, --servers real Cog servers (PyPI `cog`, the stand-in model of tests/cog_model,
whose predictions take --seconds) run a backlog of --jobs jobs across --guilds servers, queued
at once, under the real scheduler, Cog pool and SQLite store (Discord is a recording sink).
Each prediction notes on the server when it ran, so the figures are the servers' own:

- utilisation: the share of each server's wall time, from its first prediction's start to its
  last one's end (work was queued all along), spent running a prediction;
- gap: the idle time between one prediction's end and the next one's start on the same
  server (p50, p95), which is what the bot adds: learning of the end, and placing the next.

`webhooks` sets a callback URL (the end comes as the `completed` webhook, the output in it as a
`data:` URI); `uploads` also starts the servers with `--upload-url`, so the output is uploaded
to the bot and the webhook is small; `held` has no callback URL (each prediction is a
`POST /predictions` held open to its end).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bot.core.limits import SchedulerLimits
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.cog_pools import callback_url, cog_pool
from tests.cog_servers import CogServerProcess, start_all
from tests.scheduling import RecordingReporter, submit

MODES = ("webhooks", "uploads", "held")


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of the values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def run_mode(mode: str, options: argparse.Namespace, work: Path) -> dict[str, float]:
    """Run the backlog through the pool once; return utilisation and gaps."""
    url = callback_url() if mode != "held" else None
    upload_url = f"{url}/uploads/" if mode == "uploads" else None
    servers = [
        CogServerProcess(
            seconds=options.seconds,
            upload_url=upload_url,
            log_dir=work,
            spans=work / f"spans-{n}",
        )
        for n in range(options.servers)
    ]
    start_all(servers)
    reporter = RecordingReporter()
    try:
        async with (
            aiohttp.ClientSession() as http,
            cog_pool(http, servers, work, callbacks=url, interval=2.0) as pool,
        ):
            store = await SQLiteStore.open(work / "bench.sqlite3")
            scheduler = Scheduler(
                store,
                pool.pool,
                limits=SchedulerLimits(
                    running_per_guild=options.servers,
                    running_total=options.servers * 2,
                    queued_per_member=options.jobs,
                    status_interval=0,
                ),
                work_root=work / "jobs",
            )
            scheduler.attach(reporter)
            pool.pool.on_push = scheduler.push
            pool.pool.on_capacity = scheduler.capacity_changed
            await scheduler.start()
            began = time.monotonic()
            for n in range(options.jobs):
                await submit(scheduler, guild=1 + n % options.guilds, user=n, seed=n + 1)
            await reporter.wait_for(
                lambda: len(reporter.delivered) == options.jobs, timeout=options.jobs * 30
            )
            elapsed = time.monotonic() - began
            await scheduler.stop()
            await store.close()
    finally:
        for server in servers:
            server.stop()
    busy, wall, gaps = 0.0, 0.0, []
    for server in servers:
        spans = sorted(
            tuple(map(float, line.split()))
            for line in server.spans.read_text().splitlines()  # type: ignore[union-attr]
        )
        busy += sum(end - start for start, end in spans)
        wall += spans[-1][1] - spans[0][0]
        gaps += [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
    return {
        "utilisation": busy / wall,
        "gap_p50": statistics.median(gaps),
        "gap_p95": percentile(gaps, 0.95),
        "elapsed": elapsed,
        "jobs_per_minute": options.jobs / elapsed * 60,
    }


def report(results: dict[str, dict[str, float]], options: argparse.Namespace) -> str:
    """A table of the figures, one row per mode."""
    lines = [
        f"{options.servers} Cog servers, {options.seconds:g} s per prediction, "
        f"{options.jobs} jobs across {options.guilds} Discord servers",
        f"{'mode':<10} {'utilisation':>11} {'gap p50':>9} {'gap p95':>9} {'jobs/min':>9}",
    ]
    for mode, figures in results.items():
        lines.append(
            f"{mode:<10} {figures['utilisation']:>10.1%} "
            f"{figures['gap_p50'] * 1000:>7.0f}ms {figures['gap_p95'] * 1000:>7.0f}ms "
            f"{figures['jobs_per_minute']:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run each mode and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one prediction")
    parser.add_argument("--jobs", type=int, default=45, help="jobs in the backlog")
    parser.add_argument("--guilds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    options = parser.parse_args(argv)
    results = {}
    for mode in options.modes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"cog-bench-{mode}-") as work:
            results[mode] = asyncio.run(run_mode(mode, options, Path(work)))
    print(report(results, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
