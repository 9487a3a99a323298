"""The adaptive poller on a manual clock: requests per job and how late each result is seen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.core.jobs import Job
from bot.core.limits import SchedulerLimits
from bot.core.reporter import JobResult
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI, ManualClock, request_kind
from tests.scheduling import RecordingReporter, submit

QUEUE = 2.0  # seconds waiting for a GPU
FRAME = 0.1  # seconds per rendered frame
STEPS = 25


@dataclass
class TimedReporter(RecordingReporter):
    """Records when, on the manual clock, each result was handed over."""

    clock: ManualClock = field(default_factory=ManualClock)
    handed_at: dict[int, float] = field(default_factory=dict)

    async def deliver(self, job: Job, result: JobResult) -> int:
        self.handed_at[job.id] = self.clock.now
        return await super().deliver(job, result)


@dataclass
class Rig:
    clock: ManualClock
    api: FakePredictionAPI
    scheduler: Scheduler
    reporter: TimedReporter
    run_times: dict[int, float] = field(default_factory=dict)  # seconds on the GPU, per seed

    async def run(self, seed: int, run_time: float) -> tuple[int, float]:
        """Run one job to its result; return its API requests and its delivery lag."""
        self.run_times[seed] = run_time
        before = len(self.api.requests)
        job = await submit(self.scheduler, seed=seed, steps=STEPS)
        await self.reporter.wait_for(lambda: job.id in self.reporter.handed_at)
        kinds = [request_kind(r.method, r.path) for r in self.api.requests[before:]]
        assert set(kinds) <= {"create", "poll", "download"}, kinds
        completed = self.api.latest.completed_at
        assert completed is not None
        return len(kinds), self.reporter.handed_at[job.id] - completed.timestamp()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = ManualClock()
    api = FakePredictionAPI(clock=clock)
    await api.start()
    store = await SQLiteStore.open(tmp_path / "jobs.sqlite3", clock=clock.time)
    reporter = TimedReporter(clock=clock)
    async with aiohttp.ClientSession() as http:
        client = PredictionClient(
            http,
            base_url=api.base_url,
            token=api.token,
            version=api.version,
            wait_seconds=60,
            sleep=clock.sleep,
        )
        scheduler = Scheduler(
            store,
            client,
            limits=SchedulerLimits(status_interval=0),
            clock=clock.time,
            wall_clock=clock.time,
            sleep=clock.sleep,
            work_root=tmp_path / "work",
        )
        scheduler.attach(reporter)
        rig = Rig(clock, api, scheduler, reporter)

        def behaviour(data: dict[str, object]) -> Behaviour:
            run_time = rig.run_times[int(str(data["seed"]))]
            step = (run_time - 16 * FRAME) / STEPS
            return Behaviour(queue_time=QUEUE, step_time=step, frame_time=FRAME)

        api.behaviour_for = behaviour
        await scheduler.start()
        try:
            yield rig
        finally:
            await scheduler.stop()
            await api.close()
            await store.close()


async def test_a_result_inside_the_held_create_costs_one_create_and_one_download(
    rig: Rig,
) -> None:
    requests, lag = await rig.run(seed=1, run_time=40.0)
    assert requests == 2
    assert lag == pytest.approx(0.0, abs=1e-6)


async def test_a_long_prediction_seen_first_is_found_within_a_second_in_four_requests(
    rig: Rig,
) -> None:
    # Nothing learned yet: one poll aims into the frame bar to read its rate, one at the end.
    requests, lag = await rig.run(seed=1, run_time=85.0)
    assert requests <= 4
    assert 0 <= lag < 1.0


@pytest.mark.parametrize("run_times", [(90.0, 62.0, 70.0, 88.0, 59.0, 75.0, 81.0, 66.0)])
async def test_polls_timed_from_progress_and_measured_runs(
    rig: Rig, run_times: tuple[float, ...]
) -> None:
    counts: list[int] = []
    for seed, run_time in enumerate(run_times, start=1):
        requests, lag = await rig.run(seed=seed, run_time=run_time)
        assert 0 <= lag < 1.0, (run_time, lag)
        counts.append(requests)
    assert max(counts) <= 4, counts
    # Once a run has taught the poller what follows sampling, one poll lands on the end.
    assert counts[1:] == [3 if t + QUEUE > 60 else 2 for t in run_times[1:]], counts


async def test_a_prediction_waiting_for_a_gpu_is_polled_with_backoff_not_hammered(
    rig: Rig,
) -> None:
    rig.api.behaviour_for = lambda _data: Behaviour(
        queue_time=200.0, step_time=1.0, frame_time=FRAME
    )
    requests, lag = await rig.run(seed=1, run_time=26.6)
    # 140 s more in the queue after the 60 s hold: backoff polls, at most one per 15 s
    # (the 0.5 s baseline would spend about 450 requests on this job).
    assert requests <= 20
    assert 0 <= lag < 1.0
