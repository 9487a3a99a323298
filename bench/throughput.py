"""Throughput: the bot's own cost per job, adaptive polling against the official client's way.

    python -m bench.throughput --deliveries 300 --time-scale 0.25

For each strategy, in its own process (so peak RSS and CPU are its own), the real scheduler,
prediction client and SQLite store run with a backlog of --jobs queued jobs across --guilds
servers (written straight into SQLite, as a restart finds them) and --running predictions at
once, against the fake prediction API in another process. Predictions wait 1-4 s for a GPU
and run 20-90 s; --time-scale runs every duration that much faster (the fake's timings, the
Prefer: wait hold, and the scheduler's sleeps and clocks alike), while every figure is given
in unscaled seconds. Discord is a recording sink. A strategy stops after --deliveries results.

Strategies: `baseline` creates without holding and polls every 0.5 s, as the official Python
client does; `adaptive` is the bot: a create held with Prefer: wait, then polls aimed at the
end its progress logs and measured runs foretell; `webhook` is the bot with PUBLIC_WEBHOOK_URL
set: the fake pushes log lines and the end to the bot's webhook receiver (signed, verified),
and a poll is only the safety net for a lost push.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import os
import platform
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bot.backends.base import Prediction
from bot.backends.replicate import PredictionClient
from bot.backends.webhooks import WebhookReceiver, WebhookVerifier
from bot.core.eta import TimingHistory, instant
from bot.core.jobs import GenerationRequest, Job
from bot.core.limits import SchedulerLimits
from bot.core.polling import PollPlanner
from bot.core.progress import Progress
from bot.core.reporter import JobResult, JobStatusUpdate
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore

STRATEGIES = ("baseline", "adaptive", "webhook")
STEPS = 25
FRAME_TIME = 0.15
BASELINE_INTERVAL = 0.5  # the official client's poll interval


# ---- the fake API, in a process of its own -------------------------------------------------


async def serve_fake(time_scale: float, seed: int) -> None:
    """Serve the fake prediction API until stdin closes; print where it listens first."""
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


# ---- the bot side ----------------------------------------------------------------------------


@dataclass
class ScaledTime:
    """Clocks and a sleep that run `scale` times as fast as real time, in unscaled seconds."""

    scale: float
    origin: float = field(default_factory=time.monotonic)
    wall_origin: float = field(default_factory=time.time)

    def monotonic(self) -> float:
        """Unscaled seconds since the start."""
        return (time.monotonic() - self.origin) / self.scale

    def wall(self) -> float:
        """Unix seconds on the scaled timeline."""
        return self.wall_origin + self.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of unscaled time."""
        await asyncio.sleep(max(0.0, seconds) * self.scale)


class BaselineClient(PredictionClient):
    """The official client's create: answered at once, without holding for the result."""

    async def create(self, api_input: Mapping[str, Any], *, wait: bool | None = None) -> Prediction:
        """Create without `Prefer: wait`."""
        return await super().create(api_input, wait=False)


class BaselinePlanner(PollPlanner):
    """The bot's polls timed every 0.5 s, whatever the logs say."""

    def delay(self, job: Job, prediction: Prediction, progress: Progress, polls: int) -> float:
        """Poll at the official client's fixed interval."""
        return BASELINE_INTERVAL


@dataclass
class Sink:
    """The Discord side: counts what would be sent and when each result was handed over."""

    time: ScaledTime
    status_edits: Counter[int] = field(default_factory=Counter)
    results: dict[int, str] = field(default_factory=dict)  # job -> prediction id
    lags: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 0
    completed_at: dict[str, float] = field(default_factory=dict)
    pushed_at: dict[str, float] = field(default_factory=dict)  # webhook: when the end arrived
    push_lags: list[float] = field(default_factory=list)

    async def show_status(self, job: Job, update: JobStatusUpdate) -> None:
        self.status_edits[job.id] += 1

    async def deliver(self, job: Job, result: JobResult) -> int:
        completed = self.completed_at.get(result.prediction_id)
        if completed is not None:
            self.lags.append(self.time.wall() - completed)
            pushed = self.pushed_at.get(result.prediction_id)
            if pushed is not None:
                self.push_lags.append(pushed - completed)
        self.results[job.id] = result.prediction_id
        if len(self.results) >= self.target:
            self.done.set()
        return 10_000_000 + job.id

    async def announce(self, job: Job, update: JobStatusUpdate) -> int | None:
        return 20_000_000 + job.id

    async def guild_upload_limit(self, job: Job) -> int | None:
        return None

    async def find_delivered(self, job: Job) -> int | None:
        return None

    async def report_done(self, job: Job) -> None:
        self.status_edits[job.id] += 1

    async def report_failure(self, job: Job, reason: str) -> None:
        print(f"job {job.id} failed: {reason}", file=sys.stderr)

    async def report_canceled(self, job: Job) -> None:
        return None


def fill_backlog(path: Path, jobs: int, guilds: int) -> None:
    """Write `jobs` queued jobs across `guilds` servers straight into the (migrated) file."""
    rng = random.Random(1)
    now = time.time()
    rows = []
    for n in range(jobs):
        request = GenerationRequest.create(
            f"a lighthouse number {n}", seed=rng.randint(1, 2**31 - 1), steps=STEPS
        )
        guild = 1 + n % guilds
        rows.append(
            (
                guild,
                guild * 10,
                100 + n % 7,
                5_000_000 + n,
                request.to_json(),
                request.seed,
                now,
                now,
            )
        )
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO jobs (guild_id, channel_id, requester_id, request_message_id, input_json, "
            "seed, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
            rows,
        )


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """Measure how late a 10 ms timer fires: the event loop's responsiveness."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append(time.perf_counter() - started - 0.01)


async def run_worker(options: argparse.Namespace) -> dict[str, Any]:
    """Run one strategy against the fake and return its figures."""
    api = json.loads(options.api)
    scaled = ScaledTime(options.time_scale, origin=api["mono0"], wall_origin=api["epoch"])
    workdir = Path(tempfile.mkdtemp(prefix="throughput-"))
    db_path = workdir / "jobs.sqlite3"
    store = await SQLiteStore.open(db_path, clock=scaled.wall)
    await store.close()
    fill_backlog(db_path, options.jobs, options.guilds)
    requests: dict[str, Counter[str]] = defaultdict(Counter)  # prediction id -> kind -> count

    async def on_request(
        _session: object, _ctx: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        parts = params.url.path.split("/")
        if params.method == "POST" and params.url.path.endswith("/predictions"):
            requests["(creates)"]["create"] += 1
        elif parts[-2:-1] == ["predictions"]:
            requests[parts[-1]]["poll"] += 1
        elif parts[-2:-1] == ["files"]:
            requests[parts[-1].removesuffix(".mp4")]["download"] += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request)
    cpu_before = _cpu()
    sink = Sink(scaled, target=options.deliveries)
    # As the bot's own session: room for every running job's held create.
    connector = aiohttp.TCPConnector(limit=options.running + 100)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
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
        scheduler = Scheduler(
            store,
            client,
            limits=SchedulerLimits(
                running_per_guild=1, running_total=options.running, queued_per_member=100
            ),
            clock=scaled.monotonic,
            wall_clock=scaled.wall,
            sleep=scaled.sleep,
            work_root=workdir / "work",
            history=history,
            planner=planner,
        )
        original_learn = scheduler.runner.learn

        def learn(job: Job, prediction: Prediction) -> None:
            """Note when the prediction ended upstream, for the delivery lag."""
            completed = instant(prediction.completed_at)
            if completed is not None:
                sink.completed_at[prediction.id] = completed
            original_learn(job, prediction)

        scheduler.runner.learn = learn  # type: ignore[method-assign]
        scheduler.attach(sink)
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
        stop.set()
        await monitor
        await scheduler.stop(grace=0)
        await store.close()
        if receiver is not None:
            await receiver.stop()
    cpu = _cpu() - cpu_before
    delivered = set(sink.results.values())
    polls = sum(requests[p]["poll"] for p in delivered)
    downloads = sum(requests[p]["download"] for p in delivered)
    n = len(delivered)
    lags = sorted(sink.lags)
    return {
        "strategy": options.worker,
        "delivered": n,
        "creates": 1.0,
        "polls": polls / n,
        "downloads": downloads / n,
        "api_per_job": 1.0 + (polls + downloads) / n,
        "lag_p50": _pct(lags, 50),
        "lag_p95": _pct(lags, 95),
        "lag_max": lags[-1] if lags else float("nan"),
        "push_lag_p95": _pct(sorted(sink.push_lags), 95),
        "discord_ack": 1.0,
        "discord_edits": sum(sink.status_edits[j] for j in sink.results) / n,
        "discord_results": 1.0,
        "pushes": (receiver.taken if receiver is not None else 0) / n,
        "pushes_refused": receiver.rejected if receiver is not None else 0,
        "loop_lag_p99_ms": _pct(sorted(lag_samples), 99) * 1000,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_per_1000": cpu / n * 1000,
        "startup_s": startup,
    }


def _cpu() -> float:
    """CPU seconds this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pct(values: list[float], pct: float) -> float:
    """The pct-th percentile of sorted values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


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


ROWS = (
    ("API requests per delivered job", "api_per_job", "{:.2f}"),
    ("  creates", "creates", "{:.2f}"),
    ("  polls", "polls", "{:.2f}"),
    ("  downloads", "downloads", "{:.2f}"),
    ("webhook deliveries taken per job", "pushes", "{:.2f}"),
    ("  refused", "pushes_refused", "{:d}"),
    ("delivery lag p50 (s)", "lag_p50", "{:.2f}"),
    ("delivery lag p95 (s)", "lag_p95", "{:.2f}"),
    ("delivery lag max (s)", "lag_max", "{:.2f}"),
    ("  of which the webhook's own trip, p95 (s)", "push_lag_p95", "{:.2f}"),
    ("Discord requests per job", "discord_total", "{:.2f}"),
    ("  acknowledgement", "discord_ack", "{:.2f}"),
    ("  status edits", "discord_edits", "{:.2f}"),
    ("  result", "discord_results", "{:.2f}"),
    ("event-loop lag p99 (ms)", "loop_lag_p99_ms", "{:.1f}"),
    ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
    ("CPU seconds per 1,000 jobs", "cpu_per_1000", "{:.1f}"),
    ("start-up with the backlog (s)", "startup_s", "{:.2f}"),
    ("jobs delivered", "delivered", "{:d}"),
)


def report(results: list[dict[str, Any]], options: argparse.Namespace) -> str:
    """A markdown table of every strategy, with ratios to the baseline."""
    for result in results:
        result["discord_total"] = (
            result["discord_ack"] + result["discord_edits"] + result["discord_results"]
        )
    base = next((r for r in results if r["strategy"] == "baseline"), None)
    lines = [
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {options.jobs} queued jobs "
        f"across {options.guilds} servers, {options.running} running, predictions 20-90 s, "
        f"time scale {options.time_scale:g}",
        "",
        "| | " + " | ".join(r["strategy"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, key, fmt in ROWS:
        cells = []
        for result in results:
            value = result[key]
            cell = "-" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
            if key == "api_per_job" and base is not None and result is not base:
                cell += f" ({result[key] / base[key]:.1%} of baseline)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    parser.add_argument("--worker", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every strategy and print the table."""
    options = parse_options(argv)
    if options.serve_fake:
        asyncio.run(serve_fake(options.time_scale, seed=1))
        return 0
    if options.worker:
        profiler = cProfile.Profile() if options.profile else None
        if profiler is not None:
            profiler.enable()
        figures = asyncio.run(run_worker(options))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{options.profile}.{options.worker}")
        print(json.dumps(figures))
        return 0
    results = []
    for strategy in options.strategies.split(","):
        print(f"running {strategy}...", file=sys.stderr)
        results.append(run_strategy(strategy, options))
    print(report(results, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
