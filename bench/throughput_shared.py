"""One worker of the throughput benchmark on PostgreSQL: a SharedScheduler among --processes.

It joins the run's schema as a process of the bot does (membership, its shard locked, the
leases), prints a line once ready, starts its scheduler on the line "go" from stdin, and
stops at the end of stdin, printing its figures. Which jobs it runs, the database decides.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import LabellingApiBudget, pct
from bench.rig import ScaledTime, Sink, loop_lag, note_completions
from bench.throughput_meter import ApiMeter
from bot.backends.replicate import PredictionClient
from bot.core.budgets import Budgets, LocalDiscordBudget
from bot.core.eta import TimingHistory
from bot.core.jobs import Job
from bot.core.limits import SchedulerLimits
from bot.core.shared_scheduler import SharedScheduler
from bot.storage.postgres import PostgresStore, create_pool
from bot.storage.postgres_leases import PostgresLeases
from bot.storage.postgres_membership import PostgresMembership

API_PER_MINUTE = 2400  # the bot's API budget, for every process together


async def _no_settings(_guild_id: int | None) -> None:
    """No server settings in the benchmark: nothing to read again."""


async def _stdin_line() -> str:
    """The next line from stdin, read off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run_shared_worker(options: argparse.Namespace) -> dict[str, Any]:
    """Run one process of the shared store against the fake and return its figures."""
    api = json.loads(options.api)
    scaled = ScaledTime(options.time_scale, origin=api["mono0"], wall_origin=api["epoch"])
    workdir = Path(tempfile.mkdtemp(prefix="throughput-shared-"))
    shards = (options.processes, (options.process_index,))
    url = options.shared_url
    pool = await create_pool(url)
    store = await PostgresStore.open(pool, clock=scaled.wall)
    membership = PostgresMembership(url, lease_seconds=options.lease_seconds)
    await membership.join()
    await membership.take_shards(*shards)
    await membership.beat()
    shared = PostgresLeases(store, membership, lease_seconds=options.lease_seconds)
    meter = ApiMeter(scaled)
    sink = Sink(scaled, target=10**9)  # the driver decides when the run ends
    launched: dict[int, float] = {}  # job -> when (Unix seconds) this process launched it
    connector = aiohttp.TCPConnector(limit=options.running + 100)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[meter.trace()]) as http:
        client = PredictionClient(
            http,
            base_url=api["base_url"],
            token=api["token"],
            version=api["version"],
            wait_seconds=60,
            sleep=scaled.sleep,
        )
        api_budget = LabellingApiBudget(API_PER_MINUTE, clock=scaled.monotonic, sleep=scaled.sleep)
        discord_budget = LocalDiscordBudget(clock=scaled.monotonic)
        scheduler = SharedScheduler(
            store,
            client,
            shared=shared,
            shards=lambda: shards,
            reload_settings=_no_settings,
            limits=SchedulerLimits(
                running_per_guild=1,
                running_total=options.running,  # the whole limit: the processes share it
                queued_per_member=100,
                progress_poll_seconds=5.0 if options.worker == "progress" else 0.0,
            ),
            budgets=Budgets(api_budget, discord_budget),
            clock=scaled.monotonic,
            wall_clock=scaled.wall,
            sleep=scaled.sleep,
            work_root=workdir / "work",
            history=TimingHistory(),
        )
        # Leases run on the database's clock, in real seconds, and so does the dispatcher's
        # sleep (SharedScheduler's `lease_sleep`), whatever the scheduler's scaled clock.
        dispatcher = scheduler.shared
        hooks = dispatcher._hooks

        def start_claimed(job: Job) -> None:
            """Note when the job was launched here, then launch it."""
            launched.setdefault(job.id, time.time())
            hooks.start_claimed(job)

        def resume(job: Job) -> None:
            """Note when a job taken over was launched here, then launch it."""
            launched.setdefault(job.id, time.time())
            hooks.resume(job)

        dispatcher._hooks = dataclasses.replace(hooks, start_claimed=start_claimed, resume=resume)
        note_completions(scheduler, sink)
        scheduler.attach(sink)
        print(json.dumps({"ready": shared.owner}), flush=True)
        await _stdin_line()  # "go"
        cpu_before = _cpu()
        started = time.perf_counter()
        await scheduler.start()
        startup = time.perf_counter() - started
        fine: list[float] = []  # the 10 ms probe, as the one-process bench measures
        coarse: list[float] = []  # the 100 ms probe
        stop = asyncio.Event()
        probes = [
            asyncio.create_task(loop_lag(fine, stop)),
            asyncio.create_task(loop_lag(coarse, stop, interval=0.1)),
        ]
        while await _stdin_line():
            pass  # until stdin closes: the driver saw enough deliveries
        stop.set()
        await asyncio.gather(*probes)
        await scheduler.stop(grace=0)
    cpu = _cpu() - cpu_before
    await membership.leave()
    await store.close()
    await pool.close()
    return {
        "owner": shared.owner,
        "delivered": len(sink.results),
        "results": sink.results,
        "status_edits": dict(sink.status_edits),
        "discord_requests": len(sink.discord_times),
        "launched": launched,
        "first_asked": meter.first_asked,
        "polls": {k: dict(v) for k, v in meter.requests.items()},
        "api_waited": api_budget.waited,
        "lag_p95": pct(sorted(sink.lags), 95),
        "loop_lag_p99_ms": pct(sorted(fine), 99) * 1000,
        "loop_lag_100ms_p99_ms": pct(sorted(coarse), 99) * 1000,
        "loop_lag_max_ms": max(fine, default=float("nan")) * 1000,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_s": cpu,
        "startup_s": startup,
    }


def _cpu() -> float:
    """CPU seconds this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
