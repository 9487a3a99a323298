"""What members see while polling: the bar moves, the result is no later, no false `Queued`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.core.budgets import ApiUse, Budgets, LocalApiBudget, LocalDiscordBudget
from bot.core.eta import TimingHistory
from bot.core.jobs import Job
from bot.core.limits import SchedulerLimits
from bot.core.polling import PollPlanner
from bot.core.reporter import JobResult, JobStatusUpdate, Stage
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI, ManualClock, request_kind
from tests.scheduling import RecordingReporter, request, started_scheduler, submit

QUEUE = 2.0  # seconds waiting for a GPU
FRAME = 0.1  # seconds per rendered frame
STEPS = 25
PROGRESS = 5.0  # PROGRESS_POLL_SECONDS


@dataclass
class ClockedReporter(RecordingReporter):
    """Records when, on the manual clock, each status was shown and each result handed over."""

    clock: ManualClock = field(default_factory=ManualClock)
    shown_at: list[tuple[float, JobStatusUpdate]] = field(default_factory=list)
    handed_at: dict[int, float] = field(default_factory=dict)

    async def show_status(self, job: Job, update: JobStatusUpdate) -> None:
        self.shown_at.append((self.clock.now, update))
        await super().show_status(job, update)

    async def deliver(self, job: Job, result: JobResult) -> int:
        self.handed_at[job.id] = self.clock.now
        return await super().deliver(job, result)


@dataclass
class Rig:
    clock: ManualClock
    api: FakePredictionAPI
    scheduler: Scheduler
    reporter: ClockedReporter
    api_budget: LocalApiBudget
    run_times: dict[int, float] = field(default_factory=dict)

    async def run(self, seed: int, run_time: float) -> tuple[list[str], float, float]:
        """Run one job to its result: its API requests, its delivery lag and when it began."""
        self.run_times[seed] = run_time
        before = len(self.api.requests)
        began = self.clock.now
        job = await submit(self.scheduler, seed=seed, steps=STEPS)
        await self.reporter.wait_for(lambda: job.id in self.reporter.handed_at)
        kinds = [request_kind(r.method, r.path) for r in self.api.requests[before:]]
        completed = self.api.latest.completed_at
        assert completed is not None
        return kinds, self.reporter.handed_at[job.id] - completed.timestamp(), began


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = ManualClock()
    api = FakePredictionAPI(clock=clock)
    await api.start()
    store = await SQLiteStore.open(tmp_path / "jobs.sqlite3", clock=clock.time)
    reporter = ClockedReporter(clock=clock)
    api_budget = LocalApiBudget(clock=clock.time, sleep=clock.sleep)
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
            limits=SchedulerLimits(status_interval=0, progress_poll_seconds=PROGRESS),
            clock=clock.time,
            wall_clock=clock.time,
            sleep=clock.sleep,
            work_root=tmp_path / "work",
            budgets=Budgets(api_budget, LocalDiscordBudget(clock=clock.time)),
        )
        scheduler.attach(reporter)
        rig = Rig(clock, api, scheduler, reporter, api_budget)

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


async def test_a_20_s_prediction_shows_its_bar_rising_and_is_delivered_as_quickly(
    rig: Rig,
) -> None:
    kinds, lag, began = await rig.run(seed=1, run_time=20.0)
    sampling = [(at, u.step) for at, u in rig.reporter.shown_at if u.stage is Stage.SAMPLING]
    steps = [step for _, step in sampling]
    assert len(steps) >= 3 and steps == sorted(set(steps)), steps
    # It moves at least once an interval. (On the manual clock an edit is stamped when the
    # pause after its read ends, so the first one, read as the create returns after one
    # interval, is stamped after two.)
    moments = [at for at, _ in sampling]
    assert moments[0] - began <= 2 * PROGRESS + 1e-6
    assert all(b - a <= PROGRESS + 1e-6 for a, b in itertools.pairwise(moments))
    assert 0 <= lag < 1.0  # as without progress polls (tests/test_polling.py)
    # The design: a create held one interval, a progress poll each interval while sampling
    # (at 10, 15 and 20 s), two polls aimed at the end (into the frame bar, then the end),
    # and the download.
    assert kinds.count("create") == 1 and kinds.count("download") == 1
    assert rig.api_budget.spent[ApiUse.PROGRESS] == 3
    assert rig.api_budget.spent[ApiUse.ENDING] == 3  # two aimed polls and the download
    assert kinds.count("poll") == 5
    assert rig.api.create_requests == 1
    assert rig.api.requests[0].header("Prefer") == f"wait={PROGRESS:g}"


async def test_a_prediction_foretold_to_end_within_the_interval_is_held_to_its_end(
    rig: Rig,
) -> None:
    # Measured runs of 4 s: the create is held to the end, and no poll is spent.
    kinds, lag, _ = await rig.run(seed=1, run_time=4.0)
    assert 0 <= lag < 1.0  # nothing measured yet: held one interval, then an aimed poll
    assert kinds == ["create", "poll", "download"], kinds
    for seed in (2, 3):
        kinds, lag, _ = await rig.run(seed=seed, run_time=4.0)
        assert lag == pytest.approx(0.0, abs=1e-6)
        assert kinds == ["create", "download"], kinds
    assert rig.api.requests[-2].header("Prefer") == "wait=7"  # 6 s foretold, and a margin


@pytest.mark.parametrize("fault", ["a 429 asking for 25 s", "two 503s"])
async def test_a_failing_progress_poll_is_skipped_and_the_result_comes_as_quickly(
    rig: Rig, fault: str
) -> None:
    # A progress read is one attempt: it neither retries nor waits out the 429's Retry-After
    # (25 s, within what the client would sleep), so the poll aimed at the end comes on time.
    if fault.startswith("a 429"):
        headers = {"Retry-After": "25"}
        rig.api.inject("GET", r"/v1/predictions/[^/]+", status=429, headers=headers)
    else:
        # Fewer than the progress reads before the end, so that every one falls on a progress
        # read (more would reach the aimed poll, which does retry, with a backoff).
        rig.api.inject("GET", r"/v1/predictions/[^/]+", status=503, times=2)
    kinds, lag, _ = await rig.run(seed=1, run_time=20.0)
    assert 0 <= lag < 1.0, lag
    assert kinds.count("poll") == 5, kinds  # no failed read was sent again
    if fault.startswith("a 429"):
        sampling = {u.step for _, u in rig.reporter.shown_at if u.stage is Stage.SAMPLING}
        assert len(sampling) >= 2  # the next progress read moved the bar


async def test_without_progress_polls_the_create_holds_the_full_minute(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FakePredictionAPI(clock=clock) as api, aiohttp.ClientSession() as http:
        store = await SQLiteStore.open(tmp_path / "jobs.sqlite3", clock=clock.time)
        client = PredictionClient(
            http, base_url=api.base_url, token=api.token, version=api.version, sleep=clock.sleep
        )
        scheduler = Scheduler(
            store,
            client,
            limits=SchedulerLimits(status_interval=0, progress_poll_seconds=0),
            clock=clock.time,
            wall_clock=clock.time,
            sleep=clock.sleep,
            work_root=tmp_path / "work",
        )
        reporter = RecordingReporter()
        scheduler.attach(reporter)
        await scheduler.start()
        api.behaviour_for = lambda _data: Behaviour(queue_time=QUEUE, step_time=0.7)
        try:
            await submit(scheduler, steps=STEPS)
            await reporter.wait_for(lambda: reporter.delivered)
        finally:
            await scheduler.stop()
            await store.close()
        assert api.requests[0].header("Prefer") == "wait=60"
        assert [request_kind(r.method, r.path) for r in api.requests] == ["create", "download"]
        assert not [u for _, u in reporter.statuses if u.stage is Stage.SAMPLING]


async def test_the_first_status_is_the_state_at_that_moment(
    store: SQLiteStore, client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    reporter = RecordingReporter()
    async with started_scheduler(store, client, reporter, running_total=1) as scheduler:
        first = await submit(scheduler, user=1, prompt="first", reporter=reporter)
        second = await submit(scheduler, user=2, prompt="second", reporter=reporter)
        # The first starts at once: its answer says so, not `Queued` and then `Starting`.
        assert reporter.first_shown[first.id].stage is Stage.STARTING
        assert reporter.first_shown[second.id] == JobStatusUpdate(Stage.QUEUED, position=1)
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    assert not [u for job, u in reporter.statuses if job == first.id and u.stage is Stage.QUEUED]


async def test_of_two_jobs_waiting_for_one_free_slot_only_one_is_told_it_is_starting(
    store: SQLiteStore, client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.extend([Behaviour(hold=hold), Behaviour(hold=hold)])
    reporter = RecordingReporter()
    async with started_scheduler(store, client, reporter, running_total=1) as scheduler:
        # Two quick /animate in two servers: both accepted before either's message is recorded.
        a, _ = await scheduler.submit(
            guild_id=1, channel_id=10, requester_id=1, request=request(prompt="a")
        )
        b, _ = await scheduler.submit(
            guild_id=2, channel_id=20, requester_id=2, request=request(prompt="b")
        )
        shown_a, shown_b = scheduler.queued_status(a.id), scheduler.queued_status(b.id)
        assert shown_a is not None and shown_a.stage is Stage.STARTING
        assert shown_b == JobStatusUpdate(Stage.QUEUED, position=1)
        # The second's message is recorded first: the slot stays the first's all the same.
        await scheduler.attach_message(b.id, 222, shown=shown_b)
        await scheduler.attach_message(a.id, 111, shown=shown_a)
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    assert not [u for job, u in reporter.statuses if job == a.id and u.stage is Stage.QUEUED]
    first_create = prediction_api.requests[0].json
    assert isinstance(first_create, dict) and first_create["input"]["prompt"] == "a"


async def test_with_pushes_or_progress_off_the_create_is_the_backends_own_choice(
    store: SQLiteStore,
) -> None:
    job = await store.add_job(
        guild_id=1, channel_id=100, requester_id=10, request=request(steps=STEPS)
    )
    history = TimingHistory()
    pushed = PollPlanner(history, wall_clock=time.time, pushes=lambda: True)
    polled = PollPlanner(history, wall_clock=time.time, pushes=lambda: False)
    assert pushed.hold(job, PROGRESS) is None  # webhooks: the end (and progress) is pushed
    assert polled.hold(job, 0) is None  # progress polls off: held as long as the API allows
    assert polled.hold(job, PROGRESS) == PROGRESS  # nothing measured: the first bar in 5 s
