"""The scheduler under a big backlog: background re-estimates, quick posts, well-aimed polls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.backends.base import Prediction
from bot.backends.replicate import PredictionClient
from bot.core import status as status_module
from bot.core.eta import Timing
from bot.core.jobs import DEFAULT_CHECKPOINT, Job, JobStatus
from bot.core.reporter import JobStatusUpdate, Stage
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.scheduling import RecordingReporter, make_scheduler, request

GUILDS = 20
PER_GUILD = 3


async def backlog(
    store: SQLiteStore, guilds: int = GUILDS, per_guild: int = PER_GUILD
) -> list[Job]:
    """Record queued jobs with their status messages, as a restart finds them."""
    jobs = []
    for n in range(guilds * per_guild):
        job = await store.add_job(
            guild_id=1 + n % guilds,
            channel_id=100,
            requester_id=10 + n,
            request=request(prompt=f"backlog {n}", steps=10),
        )
        jobs.append(await store.set_request_message(job.id, 5000 + job.id))
    return jobs


async def refreshed(scheduler: Scheduler) -> None:
    """Let the refresher finish its pass (counted in loop turns, not time)."""
    for _ in range(10_000):
        if scheduler.status.refresher is None:
            return
        await asyncio.sleep(0)
    raise AssertionError("the refresher never finished")


@contextlib.asynccontextmanager
async def ticking() -> AsyncIterator[list[int]]:
    """Count turns of the event loop, so a test can tell whether work yielded between steps."""
    ticks = [0]

    async def tick() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(tick())
    try:
        yield ticks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_restart_edits_no_queued_message_that_still_says_the_same(
    store: SQLiteStore, client: PredictionClient, reporter: RecordingReporter
) -> None:
    jobs = await backlog(store)
    scheduler = make_scheduler(store, client, running_total=0)  # nothing starts
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        await refreshed(scheduler)
        assert reporter.statuses == []
        # The places are known all the same, for /queue and for the next change.
        assert scheduler.queued_status(jobs[-1].id) == JobStatusUpdate(
            Stage.QUEUED, position=PER_GUILD
        )
        # One leaves guild 1's queue: only the jobs behind it there are told.
        await scheduler.cancel(jobs[0].id)
        await reporter.wait_for(lambda: len(reporter.statuses) == PER_GUILD - 1)
        behind = [job.id for job in jobs if job.guild_id == 1][1:]
        assert [job_id for job_id, _ in reporter.statuses] == behind
    finally:
        await scheduler.stop()


async def test_a_measured_run_reaches_every_guild_a_chunk_at_a_time(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_module, "REFRESH_CHUNK", 4)
    jobs = await backlog(store)
    scheduler = make_scheduler(store, client, running_total=0)
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        await refreshed(scheduler)
        shown = scheduler.status.publish_positions
        turns: list[int] = []
        async with ticking() as ticks:

            def publish(guild_id: int, *, show: bool = True) -> None:
                turns.append(ticks[0])
                shown(guild_id, show=show)

            monkeypatch.setattr(scheduler.status, "publish_positions", publish)
            # What the runner's `learn` does with a run that moved the estimates.
            assert scheduler.status.history.add(Timing(DEFAULT_CHECKPOINT, 10, 5, 60))
            scheduler.status.mark_stale()
            assert turns == []  # nothing re-estimated in the caller's turn
            await refreshed(scheduler)
        assert len(turns) == GUILDS
        # Four jobs a chunk (three queued and one for the guild): one guild per turn.
        assert len(set(turns)) == GUILDS
        await reporter.wait_for(lambda: len(reporter.statuses) == len(jobs))
        assert {job_id for job_id, _ in reporter.statuses} == {job.id for job in jobs}
        assert all(update.eta is not None for _, update in reporter.statuses)
    finally:
        await scheduler.stop()


async def test_repeated_changes_before_a_pass_coalesce_into_one_per_guild(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await backlog(store)
    scheduler = make_scheduler(store, client, running_total=0)
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        await refreshed(scheduler)
        shown = scheduler.status.publish_positions
        guilds: list[int] = []

        def publish(guild_id: int, *, show: bool = True) -> None:
            guilds.append(guild_id)
            shown(guild_id, show=show)

        monkeypatch.setattr(scheduler.status, "publish_positions", publish)
        for run in (60, 70, 80):
            scheduler.status.history.add(Timing(DEFAULT_CHECKPOINT, 10, 5, run))
            scheduler.status.mark_stale()
        await refreshed(scheduler)
        assert sorted(guilds) == list(range(1, GUILDS + 1))
    finally:
        await scheduler.stop()


async def test_an_outage_banner_reaches_every_queued_job(
    store: SQLiteStore, client: PredictionClient, reporter: RecordingReporter
) -> None:
    jobs = await backlog(store)
    scheduler = make_scheduler(store, client, running_total=0)
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        await refreshed(scheduler)
        scheduler.outage.enter()
        await refreshed(scheduler)
        await reporter.wait_for(lambda: len(reporter.statuses) == len(jobs))
        assert all(update.stage is Stage.UNAVAILABLE for _, update in reporter.statuses)
    finally:
        await scheduler.stop()


async def test_a_file_that_fits_is_posted_while_another_is_being_converted(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    prediction_api.next_behaviours.append(Behaviour())
    scheduler = make_scheduler(store, client)
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        # A long conversion holds the converter for the whole test.
        async with scheduler.delivery.converting:
            job, _ = await scheduler.submit(
                guild_id=1, channel_id=100, requester_id=10, request=request()
            )
            await scheduler.attach_message(job.id, 5000 + job.id)
            await reporter.wait_for(lambda: reporter.delivered)
        assert reporter.delivered[0][0].id == job.id
    finally:
        await scheduler.stop()


def _submitted(job_id: int, at: float) -> Job:
    """A running job whose create was recorded as sent at `at` (our clock)."""
    return Job(
        id=job_id,
        guild_id=1,
        channel_id=100,
        requester_id=10,
        request=request(),
        status=JobStatus.RUNNING,
        created_at=at,
        updated_at=at,
        submitted_at=at,
    )


def _created(at: float) -> Prediction:
    """A processing prediction the API says it created at `at` (its clock)."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat()
    return Prediction(id=f"p{at}", status="processing", created_at=stamp)


async def test_the_api_clock_offset_is_the_least_delayed_reading(
    store: SQLiteStore, client: PredictionClient
) -> None:
    scheduler = make_scheduler(store, client)
    # The API's clock runs 2 s ahead; one create reached it 1.5 s after its submit was
    # recorded (a busy database), another at once.
    late = scheduler.planner.clock_offset(_submitted(1, 1000.0), _created(1003.5))
    assert late == pytest.approx(3.5)  # alone, it is all there is to go on
    prompt = scheduler.planner.clock_offset(_submitted(2, 1000.0), _created(1002.0))
    assert prompt == pytest.approx(2.0)
    assert scheduler.planner.clock_offset(_submitted(1, 1000.0), _created(1003.5)) == pytest.approx(
        2.0
    )
    scheduler.planner.forget(2)  # the prompt one finished
    assert scheduler.planner.clock_offset(_submitted(1, 1000.0), _created(1003.5)) == pytest.approx(
        3.5
    )
