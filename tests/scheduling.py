"""Helpers for driving the real scheduler: a reporter that records, and short-cuts to submit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bot.backends.base import Backend
from bot.backends.replicate import PredictionClient
from bot.core.jobs import GenerationRequest, Job
from bot.core.limits import SchedulerLimits
from bot.core.reporter import JobResult, JobStatusUpdate, Stage
from bot.core.scheduler import Scheduler
from bot.storage.base import Store
from tests.fakes.predictions import FakePredictionAPI


@dataclass
class RecordingReporter:
    """The Discord side of the scheduler, reduced to a record of what it was told."""

    statuses: list[tuple[int, JobStatusUpdate]] = field(default_factory=list)
    status_messages: list[int | None] = field(default_factory=list)
    delivered: list[tuple[Job, JobResult]] = field(default_factory=list)
    failures: list[tuple[Job, str]] = field(default_factory=list)
    canceled: list[Job] = field(default_factory=list)
    done: list[Job] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(9000))
    already_posted: dict[int, int] = field(default_factory=dict)
    upload_limit: int | None = None
    announced: list[tuple[int, JobStatusUpdate]] = field(default_factory=list)
    files: list[bytes | None] = field(default_factory=list)
    # What the caller's own answer showed (the cog's edit of the interaction), by job.
    first_shown: dict[int, JobStatusUpdate] = field(default_factory=dict)

    async def show_status(self, job: Job, update: JobStatusUpdate) -> None:
        self.statuses.append((job.id, update))
        self.status_messages.append(job.request_message_id)
        self._touch()

    async def deliver(self, job: Job, result: JobResult) -> int:
        self.delivered.append((job, result))
        # The file lives only until deliver() returns, as a real post would need it.
        self.files.append(result.file.path.read_bytes() if result.file else None)
        self._touch()
        return next(self.ids)

    async def announce(self, job: Job, update: JobStatusUpdate) -> int | None:
        self.announced.append((job.id, update))
        self._touch()
        return 7000 + job.id

    async def guild_upload_limit(self, job: Job) -> int | None:
        return self.upload_limit

    async def find_delivered(self, job: Job) -> int | None:
        return self.already_posted.get(job.id)

    async def report_done(self, job: Job) -> None:
        self.done.append(job)
        self._touch()

    async def report_failure(self, job: Job, reason: str) -> None:
        self.failures.append((job, reason))
        self._touch()

    async def report_canceled(self, job: Job) -> None:
        self.canceled.append(job)
        self._touch()

    def _touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self.changed.wait()


async def short_sleep(seconds: float) -> None:
    """Sleep at most 10 ms: the fake's predictions take a fraction of a second."""
    await asyncio.sleep(min(seconds, 0.01))


def make_scheduler(
    store: Store,
    backend: Backend,
    *,
    wall_clock: Callable[[], float] = time.time,
    work_root: Path | None = None,
    **limits: float,
) -> Scheduler:
    """A scheduler on any backend (the client on the fake API, or an in-memory one), with
    quick sleeps and instant status edits."""
    return Scheduler(
        store,
        backend,
        limits=SchedulerLimits(status_interval=0, **limits),  # type: ignore[arg-type]
        sleep=short_sleep,
        wall_clock=wall_clock,
        work_root=work_root,
    )


@contextlib.asynccontextmanager
async def started_scheduler(
    store: Store,
    backend: Backend,
    reporter: RecordingReporter,
    *,
    work_root: Path | None = None,
    **limits: float,
) -> AsyncIterator[Scheduler]:
    """A started scheduler with its own limits, stopped at the end of the block."""
    scheduler = make_scheduler(
        store,
        backend,
        work_root=work_root,
        **limits,  # pyright: ignore[reportArgumentType]
    )
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


def short_wait_client(http: aiohttp.ClientSession, api: FakePredictionAPI) -> PredictionClient:
    """A client whose create holds only one second, so held predictions get polled."""
    return PredictionClient(
        http, base_url=api.base_url, token=api.token, version=api.version, wait_seconds=1
    )


def request(
    prompt: str = "a lighthouse in a storm", seed: int = 7, steps: int = 10
) -> GenerationRequest:
    return GenerationRequest.create(prompt, seed=seed, steps=steps)


async def submit(
    scheduler: Scheduler,
    guild: int = 1,
    user: int = 10,
    reporter: RecordingReporter | None = None,
    **kwargs: object,
) -> Job:
    """Queue a request and show it, as the cog does (message id = 5000 + job id).

    With `reporter`, what the answer showed is noted in its `first_shown`.
    """
    job, position = await scheduler.submit(
        guild_id=guild,
        channel_id=guild * 100,
        requester_id=user,
        request=request(**kwargs),  # type: ignore[arg-type]
    )
    shown = scheduler.queued_status(job.id) or JobStatusUpdate(Stage.QUEUED, position=position)
    if reporter is not None:
        reporter.first_shown[job.id] = shown
    await scheduler.attach_message(job.id, 5000 + job.id, shown=shown)
    return job
