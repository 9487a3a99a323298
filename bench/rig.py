"""The bot's side of the throughput benchmark: scaled clocks, the baseline's ways, the sink."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.backends.base import Prediction
from bot.backends.replicate import PredictionClient
from bot.core.eta import instant
from bot.core.jobs import GenerationRequest, Job
from bot.core.polling import PollPlanner
from bot.core.progress import Progress
from bot.core.reporter import JobResult, JobStatusUpdate
from bot.core.scheduler import Scheduler

STEPS = 25
BASELINE_INTERVAL = 0.5  # the official client's poll interval


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

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
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
    discord_times: list[float] = field(default_factory=list)  # every request, scaled seconds
    edit_times: list[float] = field(default_factory=list)  # the status edits among them
    results: dict[int, str] = field(default_factory=dict)  # job -> prediction id
    lags: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 0
    completed_at: dict[str, float] = field(default_factory=dict)
    pushed_at: dict[str, float] = field(default_factory=dict)  # webhook: when the end arrived
    push_lags: list[float] = field(default_factory=list)

    async def show_status(self, job: Job, update: JobStatusUpdate) -> None:
        self.status_edits[job.id] += 1
        self.discord_times.append(self.time.monotonic())
        self.edit_times.append(self.discord_times[-1])

    async def deliver(self, job: Job, result: JobResult) -> int:
        self.discord_times.append(self.time.monotonic())
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
        self.discord_times.append(self.time.monotonic())

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


async def loop_lag(samples: list[float], stop: asyncio.Event, interval: float = 0.01) -> None:
    """Measure how late a timer of `interval` real seconds fires: the loop's responsiveness."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(interval)
        samples.append(time.perf_counter() - started - interval)


def note_completions(scheduler: Scheduler, sink: Sink) -> None:
    """Have the sink learn when each prediction ended upstream, for the delivery lag."""
    original_learn = scheduler.runner.learn

    def learn(job: Job, prediction: Prediction) -> None:
        """Note when the prediction ended upstream, then learn from it as the runner does."""
        completed = instant(prediction.completed_at)
        if completed is not None:
            sink.completed_at[prediction.id] = completed
        original_learn(job, prediction)

    scheduler.runner.learn = learn  # type: ignore[method-assign]
