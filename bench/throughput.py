"""Throughput: the bot's own cost per job, adaptive polling against the official client's way.

    python -m bench.throughput --deliveries 300 --time-scale 0.25

For each strategy, in its own process (so peak RSS and CPU are its own), the real scheduler,
prediction client and SQLite store run with a backlog of --jobs queued jobs across --guilds
servers (written straight into SQLite, as a restart finds them) and --running predictions at
once, against the fake prediction API in another process. Predictions wait 1-4 s for a GPU
and run 20-90 s; --time-scale runs every duration that much faster (the fake's timings, the
Prefer: wait hold, and the scheduler's sleeps and clocks alike), while every figure is given
in unscaled seconds. Discord is a recording sink. A strategy stops after --deliveries results.

    python -m bench.throughput --store postgres --processes 2 --strategies adaptive

With `--store postgres`, the backlog goes into a fresh schema of the tests' PostgreSQL and
--processes workers each run a SharedScheduler on it (shard i of N, --running the limit of
all of them together) against one fake; `--kill-after K` SIGKILLs one worker once K results
were delivered and times the take-over of its jobs (bench/throughput_cluster.py). Leases are
in real seconds (--lease-seconds), as the database's clock runs.

Strategies: `baseline` creates without holding and polls every 0.5 s, as the official Python
client does; `adaptive` is the bot with PROGRESS_POLL_SECONDS=0: a create held with Prefer:
wait, then polls aimed at the end its progress logs and measured runs foretell; `progress` is
the bot as configured by default: the create held only as long as it pays, progress read every
5 s within the API budget, the polls that learn the end still aimed; `webhook` is the bot with
PUBLIC_WEBHOOK_URL
set: the fake pushes log lines and the end to the bot's webhook receiver (signed, verified),
and a poll is only the safety net for a lost push.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import (
    LabellingApiBudget,
    Staleness,
    over_limit,
    pct,
    peak,
    per_second,
)
from bench.rig import (
    STEPS,
    BaselineClient,
    BaselinePlanner,
    ScaledTime,
    Sink,
    fill_backlog,
    loop_lag,
    note_completions,
)
from bench.table import report, report_shared
from bench.throughput_cluster import run_cluster
from bench.throughput_meter import ApiMeter
from bench.throughput_shared import run_shared_worker
from bot.backends.base import Prediction
from bot.backends.replicate import PredictionClient
from bot.backends.webhooks import WebhookReceiver, WebhookVerifier
from bot.core.budgets import Budgets, LocalDiscordBudget
from bot.core.eta import TimingHistory
from bot.core.limits import SchedulerLimits
from bot.core.scheduler import Scheduler
from bot.storage.leases import JOB_LEASE_SECONDS
from bot.storage.sqlite import SQLiteStore

STRATEGIES = ("baseline", "adaptive", "progress", "webhook")
API_LIMIT, DISCORD_LIMIT = 3000, 50  # what the API and Discord allow: beyond it, a 429
FRAME_TIME = 0.15


# ---- the fake API, in a process of its own -------------------------------------------------


async def serve_fake(time_scale: float, seed: int, *, report: bool = False) -> None:
    """Serve the fake prediction API until stdin closes; print where it listens first.

    With `report`, print at the end every request it received, counted by prediction (what
    every process together asked, the killed one's requests included).
    """
    from tests.fakes.predictions import Behaviour, FakePredictionAPI  # noqa: PLC0415

    rng = random.Random(seed)

    def behaviour(_data: dict[str, Any]) -> Behaviour:
        """A prediction that waits 1-4 s for a GPU and runs 20-90 s."""
        run_time = rng.uniform(20.0, 90.0)
        return Behaviour(
            queue_time=rng.uniform(1.0, 4.0),
            step_time=(run_time - 16 * FRAME_TIME) / STEPS,
            frame_time=FRAME_TIME,
        )

    api = FakePredictionAPI(time_scale=time_scale)
    api.behaviour_for = behaviour
    async with api:
        # Its timeline, so that the worker's scaled clocks read the same instants.
        timeline = {"epoch": api._epoch, "mono0": api._mono0}
        print(
            json.dumps(
                {"base_url": api.base_url, "token": api.token, "version": api.version, **timeline}
            )
        )
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        if report:
            print(json.dumps(requests_by_prediction(api.requests)))


def requests_by_prediction(requests: list[Any]) -> dict[str, Any]:
    """The fake's requests counted: creates, and polls and downloads by prediction id."""
    by_prediction: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    creates = 0
    for request in requests:
        parts = request.path.split("/")
        if request.method == "POST" and request.path.endswith("/predictions"):
            creates += 1
        elif parts[-2:-1] == ["predictions"] and request.method == "GET":
            by_prediction[parts[-1]]["poll"] += 1
        elif parts[-2:-1] == ["files"]:
            by_prediction[parts[-1].removesuffix(".mp4")]["download"] += 1
    return {"creates": creates, "by_prediction": by_prediction}


async def run_worker(options: argparse.Namespace) -> dict[str, Any]:
    """Run one strategy against the fake and return its figures."""
    api = json.loads(options.api)
    scaled = ScaledTime(options.time_scale, origin=api["mono0"], wall_origin=api["epoch"])
    workdir = Path(tempfile.mkdtemp(prefix="throughput-"))
    db_path = workdir / "jobs.sqlite3"
    store = await SQLiteStore.open(db_path, clock=scaled.wall)
    await store.close()
    fill_backlog(db_path, options.jobs, options.guilds)
    meter = ApiMeter(scaled)
    requests, api_times, create_times = meter.requests, meter.api_times, meter.create_times
    cpu_before = _cpu()
    sink = Sink(scaled, target=options.deliveries)
    # As the bot's own session: room for every running job's held create.
    connector = aiohttp.TCPConnector(limit=options.running + 100)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[meter.trace()]) as http:
        client_class = BaselineClient if options.worker == "baseline" else PredictionClient
        client = client_class(
            http,
            base_url=api["base_url"],
            token=api["token"],
            version=api["version"],
            wait_seconds=60,
            webhook_events=("logs", "completed"),
            sleep=scaled.sleep,
        )
        history = TimingHistory()
        planner = None
        if options.worker == "baseline":
            planner = BaselinePlanner(history, wall_clock=scaled.wall, pushes=lambda: False)
        started = time.perf_counter()
        store = await SQLiteStore.open(db_path, clock=scaled.wall)
        progress_seconds = 5.0 if options.worker == "progress" else 0.0
        # The official client knows no budget: the baseline spends as it would.
        per_minute = 10**9 if options.worker == "baseline" else 2400
        api_budget = LabellingApiBudget(per_minute, clock=scaled.monotonic, sleep=scaled.sleep)
        discord_budget = LocalDiscordBudget(clock=scaled.monotonic)
        scheduler = Scheduler(
            store,
            client,
            limits=SchedulerLimits(
                running_per_guild=1,
                running_total=options.running,
                queued_per_member=100,
                progress_poll_seconds=progress_seconds,
            ),
            budgets=Budgets(api_budget, discord_budget),
            clock=scaled.monotonic,
            wall_clock=scaled.wall,
            sleep=scaled.sleep,
            work_root=workdir / "work",
            history=history,
            planner=planner,
        )
        note_completions(scheduler, sink)
        scheduler.attach(sink)
        stale = Staleness(scheduler.status.relay, scaled.monotonic)
        receiver: WebhookReceiver | None = None
        if options.worker == "webhook":

            def push(prediction: Prediction) -> None:
                """Note when the end arrived, to split the lag into the push and the rest."""
                if prediction.is_terminal and prediction.id not in sink.pushed_at:
                    sink.pushed_at[prediction.id] = scaled.wall()
                scheduler.push(prediction)

            receiver = WebhookReceiver(
                WebhookVerifier(client.webhook_secret),
                push,
                public_url="http://127.0.0.1/hooks/replicate",
            )
            await receiver.start("127.0.0.1", 0)
            client.webhook_url = f"http://127.0.0.1:{receiver.port}/hooks/replicate"
        await scheduler.start()
        startup = time.perf_counter() - started
        lag_samples: list[float] = []
        stop = asyncio.Event()
        monitor = asyncio.create_task(loop_lag(lag_samples, stop))
        await sink.done.wait()
        wall = time.perf_counter() - started - startup
        stop.set()
        await monitor
        await scheduler.stop(grace=0)
        await store.close()
        if receiver is not None:
            await receiver.stop()
    cpu = _cpu() - cpu_before
    delivered = set(sink.results.values())
    ending = sum(requests[p]["poll_ending"] for p in delivered)
    progress = sum(requests[p]["poll_progress"] for p in delivered)
    downloads = sum(requests[p]["download"] for p in delivered)
    n = len(delivered)
    lags = sorted(sink.lags)
    discord_seconds = [float(c) for c in per_second(sink.discord_times)]
    return {
        "strategy": options.worker,
        "delivered": n,
        "creates": 1.0,
        "polls_ending": ending / n,
        "polls_progress": progress / n,
        "downloads": downloads / n,
        "ending_per_job": (ending + downloads) / n,
        "api_per_job": 1.0 + (ending + progress + downloads) / n,
        "api_peak_minute": peak(api_times, 60.0),
        "api_budget": api_budget.per_minute,
        "api_429": over_limit(api_times, 60.0, API_LIMIT) + over_limit(create_times, 60.0, 600),
        "creates_peak_minute": peak(create_times, 60.0),
        "discord_peak_second": peak(sink.discord_times, 1.0),
        "discord_p95_second": pct(discord_seconds, 95),
        "edits_peak_second": peak(sink.edit_times, 1.0),
        "discord_budget": discord_budget.per_second,
        "discord_429": over_limit(sink.discord_times, 1.0, DISCORD_LIMIT),
        "stale_running_p50": pct(stale.running, 50),
        "stale_running_p95": pct(stale.running, 95),
        "stale_ticks_p50": pct(stale.ticks, 50),
        "stale_ticks_p95": pct(stale.ticks, 95),
        "stale_queued_p50": pct(stale.queued, 50),
        "stale_queued_p95": pct(stale.queued, 95),
        "api_waited": api_budget.waited,
        "discord_sent": dict(discord_budget.sent),
        "lag_p50": pct(lags, 50),
        "lag_p95": pct(lags, 95),
        "lag_max": lags[-1] if lags else float("nan"),
        "push_lag_p95": pct(sorted(sink.push_lags), 95),
        "discord_ack": 1.0,
        "discord_edits": sum(sink.status_edits[j] for j in sink.results) / n,
        "discord_results": 1.0,
        "pushes": (receiver.taken if receiver is not None else 0) / n,
        "pushes_refused": receiver.rejected if receiver is not None else 0,
        "loop_lag_p99_ms": pct(sorted(lag_samples), 99) * 1000,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_per_1000": cpu / n * 1000,
        "startup_s": startup,
        "jobs_per_second": n / wall * options.time_scale,
    }


def _cpu() -> float:
    """CPU seconds this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the driver ----------------------------------------------------------------------------


def run_strategy(strategy: str, options: argparse.Namespace) -> dict[str, Any]:
    """Start a fresh fake and a worker for one strategy; return the worker's figures."""
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.throughput",
            "--serve-fake",
            "--time-scale",
            str(options.time_scale),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        api = fake.stdout.readline().strip()
        worker = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.throughput",
                "--worker",
                strategy,
                "--api",
                api,
                "--time-scale",
                str(options.time_scale),
                "--jobs",
                str(options.jobs),
                "--guilds",
                str(options.guilds),
                "--running",
                str(options.running),
                "--deliveries",
                str(options.deliveries),
                *(["--profile", options.profile] if options.profile else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        return json.loads(worker.stdout.strip().splitlines()[-1])
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(timeout=30)


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--jobs", type=int, default=10_000, help="queued jobs in the backlog")
    parser.add_argument("--guilds", type=int, default=1_000)
    parser.add_argument("--running", type=int, default=200, help="predictions running at once")
    parser.add_argument("--deliveries", type=int, default=300, help="results per strategy")
    parser.add_argument("--time-scale", type=float, default=0.25)
    parser.add_argument("--profile", help="write a cProfile of each worker to PROFILE.<strategy>")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="postgres: a fresh schema of the tests' PostgreSQL, shared by --processes workers",
    )
    parser.add_argument("--processes", type=int, default=1, help="workers (more than 1: postgres)")
    parser.add_argument(
        "--kill-after",
        type=int,
        default=0,
        help="SIGKILL the last worker once this many results were delivered (postgres)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=JOB_LEASE_SECONDS,
        help="JOB_LEASE_SECONDS, real seconds (leases run on the database's clock)",
    )
    parser.add_argument("--worker", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report-requests", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shared-url", help=argparse.SUPPRESS)
    parser.add_argument("--process-index", type=int, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker or options.serve_fake:
        return options
    if options.processes < 1:
        parser.error("--processes must be at least 1")
    if options.processes > 1 and options.store != "postgres":
        parser.error("--processes above 1 needs --store postgres (SQLite is one process's)")
    if options.kill_after and (options.store != "postgres" or options.processes < 2):
        parser.error("--kill-after needs --store postgres and --processes 2 or more")
    if options.store == "postgres" and "webhook" in options.strategies.split(","):
        parser.error("--store postgres runs baseline, adaptive or progress (not webhook)")
    return options


def main(argv: list[str] | None = None) -> int:
    """Run every strategy and print the table."""
    options = parse_options(argv)
    if options.serve_fake:
        asyncio.run(serve_fake(options.time_scale, seed=1, report=options.report_requests))
        return 0
    if options.worker:
        profiler = cProfile.Profile() if options.profile else None
        if profiler is not None:
            profiler.enable()
        if options.shared_url:
            figures = asyncio.run(run_shared_worker(options))
        else:
            figures = asyncio.run(run_worker(options))
        if profiler is not None:
            profiler.disable()
            suffix = f".{options.process_index}" if options.shared_url else ""
            profiler.dump_stats(f"{options.profile}.{options.worker}{suffix}")
        print(json.dumps(figures))
        return 0
    if options.store == "postgres":
        shared = []
        for strategy in options.strategies.split(","):
            print(f"running {strategy} on {options.processes} processes...", file=sys.stderr)
            shared.append(asyncio.run(run_cluster(strategy, options)))
        print(report_shared(shared, options))
        return 0
    results = []
    for strategy in options.strategies.split(","):
        print(f"running {strategy}...", file=sys.stderr)
        results.append(run_strategy(strategy, options))
    print(report(results, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
