"""The scheduler with the real store and client against the fake prediction API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.core.jobs import Job, JobStatus
from bot.core.limits import QueueFull, SchedulerLimits
from bot.core.reporter import CancelOutcome, JobStatusUpdate, Stage
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from bot.texts.member import canceled_text
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.scheduling import (
    RecordingReporter,
    make_scheduler,
    request,
    short_wait_client,
    started_scheduler,
    submit,
)


@pytest.fixture
async def scheduler(
    store: SQLiteStore, client: PredictionClient, reporter: RecordingReporter
) -> AsyncIterator[Scheduler]:
    scheduler = make_scheduler(store, client)
    scheduler.attach(reporter)
    await scheduler.start()
    yield scheduler
    await scheduler.stop()


async def test_happy_path_delivers_once_and_records_done(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    await scheduler.wait_idle()
    delivered, result = reporter.delivered[0]
    assert reporter.files[0] == prediction_api.sample  # it fits: posted exactly as made
    assert result.file is not None and result.file.content_type == "video/mp4"
    assert result.file.filename == "animate-7-a-lighthouse-in-a-storm.mp4"
    assert result.predict_time is not None and result.model_version == prediction_api.version
    assert not result.file.path.exists(), "the temporary files are removed after posting"
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.DONE
    assert stored.result_message_id == 9000 and stored.request_message_id == 5000 + job.id
    assert delivered.request_message_id == 5000 + job.id
    # The queue position was already shown by the caller: no edit repeats it.
    assert all(update.stage is not Stage.QUEUED for _, update in reporter.statuses)
    assert prediction_api.creates == 1 and prediction_api.downloads == 1
    assert prediction_api.create_bodies[0]["input"]["seed"] == 7


async def test_a_job_waits_for_its_message_before_it_starts(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    prediction_api.next_behaviours.append(Behaviour(outcome="failed"))
    job, _ = await scheduler.submit(guild_id=1, channel_id=100, requester_id=10, request=request())
    await asyncio.sleep(0.05)
    assert prediction_api.create_requests == 0  # not before its message exists
    await scheduler.attach_message(job.id, 31337)
    await reporter.wait_for(lambda: reporter.failures)
    failed, reason = reporter.failures[0]
    assert failed.request_message_id == 31337 and "CUDA out of memory" in reason


async def test_a_job_whose_message_failed_posts_its_own_and_runs(
    scheduler: Scheduler, store: SQLiteStore, reporter: RecordingReporter
) -> None:
    job, _ = await scheduler.submit(guild_id=1, channel_id=100, requester_id=10, request=request())
    await scheduler.attach_message(job.id, None)  # showing it failed
    await reporter.wait_for(lambda: reporter.delivered)
    assert reporter.announced == [(job.id, JobStatusUpdate(Stage.STARTING))]
    assert reporter.delivered[0][0].request_message_id == 7000 + job.id
    stored = await store.get(job.id)
    assert stored is not None and stored.request_message_id == 7000 + job.id


async def test_a_waiting_job_whose_message_failed_is_shown_its_place_at_once(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    gate = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=gate))
    await submit(scheduler)  # runs, and stays running until the gate opens
    job, _ = await scheduler.submit(
        guild_id=1, channel_id=100, requester_id=11, request=request(seed=8)
    )
    await scheduler.attach_message(job.id, None)  # showing it failed, and it must wait
    # Shown now, while its interaction token lives, not when its turn comes.
    await reporter.wait_for(lambda: reporter.announced)
    [(announced_id, update)] = reporter.announced
    assert announced_id == job.id and (update.stage, update.position) == (Stage.QUEUED, 1)
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.QUEUED
    assert stored.request_message_id == 7000 + job.id
    gate.set()
    await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    assert len(reporter.announced) == 1  # it ran on the message it was given
    assert reporter.delivered[1][0].request_message_id == 7000 + job.id


async def test_a_waiting_job_announced_while_the_queue_moves_shows_its_new_place(
    store: SQLiteStore, client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    gate, announcing = asyncio.Event(), asyncio.Event()

    class SlowAnnouncer(RecordingReporter):
        async def announce(self, job: Job, update: JobStatusUpdate) -> int | None:
            announcing.set()
            await gate.wait()  # Discord is slow to post it: the queue moves meanwhile
            return await super().announce(job, update)

    reporter = SlowAnnouncer()
    running = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=running))
    async with started_scheduler(store, client, reporter) as scheduler:
        await submit(scheduler)  # runs until `running` is set
        ahead = await submit(scheduler, user=11, seed=8)
        job, _ = await scheduler.submit(
            guild_id=1, channel_id=100, requester_id=12, request=request(seed=9)
        )
        await scheduler.attach_message(job.id, None)
        await announcing.wait()
        assert reporter.announced == []
        await scheduler.cancel(ahead.id)  # it moves up while its message is being made
        gate.set()
        await reporter.wait_for(lambda: any(job_id == job.id for job_id, _ in reporter.statuses))
        [(_, announced)] = reporter.announced
        assert announced.position == 2  # what it was when the message was made
        shown = [update for job_id, update in reporter.statuses if job_id == job.id]
        assert (shown[-1].stage, shown[-1].position) == (Stage.QUEUED, 1)
        running.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)


async def test_a_restart_shows_waiting_jobs_without_a_message_their_place_at_once(
    store: SQLiteStore, client: PredictionClient, reporter: RecordingReporter
) -> None:
    jobs = [
        await store.add_job(guild_id=1, channel_id=100, requester_id=10 + n, request=request())
        for n in range(2)
    ]  # both acknowledged, then the bot died before either message id was stored
    async with started_scheduler(store, client, reporter):
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    first, second = reporter.announced
    assert first == (jobs[0].id, JobStatusUpdate(Stage.STARTING))
    assert second[0] == jobs[1].id and (second[1].stage, second[1].position) == (Stage.QUEUED, 1)
    assert [job.request_message_id for job, _ in reporter.delivered] == [
        7000 + jobs[0].id,
        7000 + jobs[1].id,
    ]


async def test_canceled_before_its_message_was_recorded_is_shown_on_it(
    scheduler: Scheduler, store: SQLiteStore, reporter: RecordingReporter
) -> None:
    job, _ = await scheduler.submit(guild_id=1, channel_id=100, requester_id=10, request=request())
    assert await scheduler.cancel(job.id) is CancelOutcome.CANCELED
    await scheduler.attach_message(job.id, 777)
    assert [j.request_message_id for j in reporter.canceled] == [None, 777]
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.CANCELED


async def test_guilds_take_turns(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with started_scheduler(store, client, reporter, running_total=1) as scheduler:
        for n in range(4):
            await submit(scheduler, guild=1, user=10 + n, prompt=f"A{n}")
        for n in range(2):
            await submit(scheduler, guild=2, user=20 + n, prompt=f"B{n}")
        assert scheduler.position((await store.unfinished())[-1].id) == 2
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 6)
        order = [job.request.prompt for job, _ in reporter.delivered]
        assert order == ["A0", "A1", "B0", "A2", "B1", "A3"]


async def test_limits_per_guild_and_in_total(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.behaviour_for = lambda _input: Behaviour(hold=hold)
    async with started_scheduler(
        store, client, reporter, running_total=2, running_per_guild=1
    ) as scheduler:
        for n, guild in enumerate((1, 1, 2, 3)):
            await submit(scheduler, guild=guild, user=10 + n, prompt=f"job {n}")
        await prediction_api.wait_for(lambda: prediction_api.creates == 2)
        running = [
            e.job.guild_id for g in (1, 2, 3) for e in scheduler.snapshot(g) if e.position is None
        ]
        assert sorted(running) == [1, 2]
        assert [e.position for e in scheduler.snapshot(1)] == [None, 1]
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 4)
        assert prediction_api.creates == 4


async def test_identical_requests_never_claim_each_others_prediction(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    first = await submit(scheduler, guild=1, user=1)
    await prediction_api.wait_for(lambda: prediction_api.latest.status == "processing")
    # Same prompt and seed in another server; its create is lost on the way.
    prediction_api.inject("POST", r"/v1/predictions", drop=True)
    second = await submit(scheduler, guild=2, user=2)
    hold.set()
    await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    assert not reporter.failures
    first_job, second_job = await store.get(first.id), await store.get(second.id)
    assert first_job is not None and second_job is not None
    assert first_job.prediction_id != second_job.prediction_id
    assert prediction_api.creates == 2


async def test_member_cap_refuses_with_a_sentence(
    scheduler: Scheduler, prediction_api: FakePredictionAPI
) -> None:
    hold = asyncio.Event()
    prediction_api.behaviour_for = lambda _input: Behaviour(hold=hold)
    for _ in range(3):
        await submit(scheduler, guild=1, user=10)
    with pytest.raises(QueueFull, match="already have 3 requests"):
        await submit(scheduler, guild=1, user=10)
    await submit(scheduler, guild=1, user=11)  # someone else
    await submit(scheduler, guild=2, user=10)  # another server
    assert scheduler.pending_for(1, 10) == 3
    hold.set()


async def test_cancel_while_queued_never_creates(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    first = await submit(scheduler, user=1, prompt="first")
    second = await submit(scheduler, user=2, prompt="second")
    third = await submit(scheduler, user=3, prompt="third")
    assert scheduler.position(third.id) == 2
    assert await scheduler.cancel(second.id) is CancelOutcome.CANCELED
    assert scheduler.position(third.id) == 1
    assert reporter.canceled[0].id == second.id
    hold.set()
    await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    stored = await store.get(second.id)
    assert stored is not None and stored.status is JobStatus.CANCELED
    prompts = [body["input"]["prompt"] for body in prediction_api.create_bodies]
    assert prompts == ["first", "third"]
    assert await scheduler.cancel(first.id) is CancelOutcome.TOO_LATE


async def test_cancel_while_the_create_is_held_open_cancels_upstream(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    prediction_api.next_behaviours.append(Behaviour(hold=asyncio.Event()))
    job = await submit(scheduler)
    await prediction_api.wait_for(lambda: prediction_api.latest.status == "processing")
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.SUBMITTED  # create still held
    assert await scheduler.cancel(job.id) is CancelOutcome.CANCELING
    await reporter.wait_for(lambda: reporter.canceled)
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.CANCELED
    assert prediction_api.latest.status == "canceled" and prediction_api.cancels >= 1
    assert not reporter.delivered and not reporter.failures


async def test_cancel_while_polling_cancels_upstream(
    store: SQLiteStore,
    http: aiohttp.ClientSession,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    prediction_api.next_behaviours.append(Behaviour(hold=asyncio.Event()))
    async with started_scheduler(
        store, short_wait_client(http, prediction_api), reporter
    ) as scheduler:
        job = await submit(scheduler)
        running = await store_wait(store, job.id, JobStatus.RUNNING)
        assert await scheduler.cancel(job.id) is CancelOutcome.CANCELING
        await reporter.wait_for(lambda: reporter.canceled)
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.CANCELED
    assert prediction_api.cancels == 1
    assert prediction_api.predictions[running.prediction_id or ""].status == "canceled"
    assert not reporter.delivered and not reporter.failures


async def test_pressing_cancel_again_does_not_hurry_the_polls(
    store: SQLiteStore,
    http: aiohttp.ClientSession,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    scheduler = Scheduler(
        store,
        short_wait_client(http, prediction_api),
        limits=SchedulerLimits(status_interval=0),  # real sleeps: polls are >= 0.5 s apart
    )
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        job = await submit(scheduler)
        running = await store_wait(store, job.id, JobStatus.RUNNING)
        # The API accepts the cancel, but the prediction takes a while to stop.
        prediction_api.inject(
            "POST",
            r"/v1/predictions/[^/]+/cancel",
            status=200,
            body={"id": running.prediction_id, "status": "processing"},
            times=100,
        )
        assert await scheduler.cancel(job.id) is CancelOutcome.CANCELING
        await prediction_api.wait_for(lambda: prediction_api.cancels >= 1)
        assert await scheduler.cancel(job.id) is CancelOutcome.CANCELING
        before = prediction_api.polls
        await asyncio.sleep(0.3)
        assert prediction_api.polls - before <= 1
        assert prediction_api.cancels == 1
    finally:
        hold.set()
        await scheduler.stop()


async def test_cancel_pressed_as_it_succeeds_is_still_honoured(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    job = await submit(scheduler)
    await prediction_api.wait_for(lambda: prediction_api.latest.status == "processing")
    # The cancel request is lost; the prediction then succeeds anyway.
    prediction_api.inject("POST", r"/v1/predictions/[^/]+/cancel", status=500, times=100)
    assert await scheduler.cancel(job.id) is CancelOutcome.CANCELING
    hold.set()
    await reporter.wait_for(lambda: reporter.canceled)
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.CANCELED
    assert not reporter.delivered


async def test_a_long_retry_after_is_waited_out_by_the_scheduler(
    scheduler: Scheduler, reporter: RecordingReporter, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.inject(
        "POST",
        r"/v1/predictions",
        status=429,
        headers={"Retry-After": "600"},
        body={"detail": "Request was throttled.", "status": 429},
    )
    await submit(scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    assert any(u.stage is Stage.UNAVAILABLE for _, u in reporter.statuses)
    assert prediction_api.create_requests == 2


async def test_a_result_posted_just_before_a_crash_is_not_posted_again(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    job = await store.add_job(guild_id=1, channel_id=1, requester_id=1, request=request())
    await store.mark_submitted(job.id)
    created = await client.create(job.request.to_api_input())
    await store.mark_running(job.id, created.id)
    await store.mark_delivering(job.id, predict_time=None)
    reporter.already_posted[job.id] = 4444  # the last run posted it, then died
    async with started_scheduler(store, client, reporter):
        await reporter.wait_for(lambda: reporter.done)
    stored = await store.get(job.id)
    assert stored is not None and stored.result_message_id == 4444
    assert not reporter.delivered and prediction_api.downloads == 0


async def test_failure_is_reported_and_the_queue_moves_on(
    scheduler: Scheduler,
    store: SQLiteStore,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    prediction_api.next_behaviours.append(Behaviour(outcome="failed"))
    failing = await submit(scheduler, user=1)
    await submit(scheduler, user=2)
    await reporter.wait_for(lambda: reporter.failures and reporter.delivered)
    job, reason = reporter.failures[0]
    assert job.id == failing.id
    assert reason.startswith("The animation failed: CUDA out of memory")
    stored = await store.get(failing.id)
    assert stored is not None and stored.status is JobStatus.FAILED and stored.error == reason


@pytest.mark.parametrize("outcome", ["canceled", "aborted"])
async def test_stopped_upstream_by_someone_else_is_a_failure(
    scheduler: Scheduler,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
    outcome: str,
) -> None:
    prediction_api.next_behaviours.append(Behaviour(outcome=outcome))  # type: ignore[arg-type]
    await submit(scheduler)
    await reporter.wait_for(lambda: reporter.failures)
    assert "stopped this request" in reporter.failures[0][1]


async def test_refused_input_fails_with_the_api_detail(
    scheduler: Scheduler, reporter: RecordingReporter, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.inject(
        "POST", r"/v1/predictions", status=422, body={"detail": "input.prompt: too spicy"}
    )
    await submit(scheduler)
    await reporter.wait_for(lambda: reporter.failures)
    assert (
        reporter.failures[0][1]
        == "The animation service refused the request: input.prompt: too spicy"
    )


async def test_an_outage_waits_in_the_queue_instead_of_failing(
    scheduler: Scheduler, reporter: RecordingReporter, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.inject("POST", r"/v1/predictions", status=503, times=12)
    await submit(scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    assert any(update.stage is Stage.UNAVAILABLE for _, update in reporter.statuses)
    assert prediction_api.creates == 1 and not reporter.failures


async def test_unknown_create_outcome_finds_the_prediction_instead_of_paying_twice(
    scheduler: Scheduler, reporter: RecordingReporter, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.inject("POST", r"/v1/predictions", status=502, after_create=True)
    await submit(scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    assert prediction_api.creates == 1


async def test_progress_is_reported_from_the_logs_once_polling(
    store: SQLiteStore,
    http: aiohttp.ClientSession,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with started_scheduler(
        store, short_wait_client(http, prediction_api), reporter
    ) as scheduler:
        await submit(scheduler, steps=10)
        await reporter.wait_for(
            lambda: any(u.stage is Stage.SAMPLING and u.step == 5 for _, u in reporter.statuses)
        )
        sampling = [u for _, u in reporter.statuses if u.stage is Stage.SAMPLING]
        assert all(u.total == 10 for u in sampling)
        hold.set()
        await reporter.wait_for(lambda: reporter.delivered)
    stages = [u.stage for _, u in reporter.statuses]
    # It started at once: the answer already said so, and no edit says `Queued`.
    assert Stage.QUEUED not in stages and stages[0] in (Stage.STARTING, Stage.SAMPLING)
    assert stages[-1] is Stage.UPLOADING or Stage.RENDERING in stages


async def test_resume_after_restart_delivers_each_job_once(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    # Jobs left behind by a bot that died at different points.
    queued_a = await store.add_job(
        guild_id=1, channel_id=1, requester_id=1, request=request("qa", 1)
    )
    queued_b = await store.add_job(
        guild_id=1, channel_id=1, requester_id=2, request=request("qb", 2)
    )
    running = await store.add_job(
        guild_id=2, channel_id=2, requester_id=3, request=request("run", 3)
    )
    submitted = await store.add_job(
        guild_id=3, channel_id=3, requester_id=4, request=request("sub", 4)
    )
    delivering = await store.add_job(
        guild_id=4, channel_id=4, requester_id=5, request=request("dl", 5)
    )
    for job in (running, submitted, delivering):
        await store.mark_submitted(job.id)
    for job in (running, submitted, delivering):
        created = await client.create(job.request.to_api_input(), wait=False)
        if job is not submitted:  # `submitted` died before storing the answer
            await store.mark_running(job.id, created.id)
    await store.mark_delivering(delivering.id, predict_time=None)
    await prediction_api.wait_for(
        lambda: all(p.terminal for p in prediction_api.predictions.values())
    )
    creates_before = prediction_api.creates

    async with started_scheduler(store, client, reporter, running_total=4) as scheduler:
        await reporter.wait_for(lambda: len(reporter.delivered) == 5)
        await scheduler.wait_idle()
    prompts = sorted(job.request.prompt for job, _ in reporter.delivered)
    assert prompts == ["dl", "qa", "qb", "run", "sub"]
    assert prediction_api.creates == creates_before + 2  # only the two queued jobs
    for job in (queued_a, queued_b, running, submitted, delivering):
        stored = await store.get(job.id)
        assert stored is not None and stored.status is JobStatus.DONE
    delivered_order = [job.request.prompt for job, _ in reporter.delivered if job.guild_id == 1]
    assert delivered_order == ["qa", "qb"]


async def test_stop_leaves_running_jobs_recorded_for_the_next_start(
    store: SQLiteStore,
    http: aiohttp.ClientSession,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    client = short_wait_client(http, prediction_api)
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    scheduler = make_scheduler(store, client)
    scheduler.attach(reporter)
    await scheduler.start()
    job = await submit(scheduler)
    queued = await submit(scheduler, user=11)
    await store_wait(store, job.id, JobStatus.RUNNING)
    await scheduler.stop()
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.RUNNING
    left = await store.get(queued.id)
    assert left is not None and left.status is JobStatus.QUEUED
    hold.set()
    again = make_scheduler(store, client)
    again.attach(reporter)
    await again.start()
    try:
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    finally:
        await again.stop()
    assert prediction_api.creates == 2
    assert [j.id for j, _ in reporter.delivered] == [job.id, queued.id]


async def store_wait(store: SQLiteStore, job_id: int, status: JobStatus) -> Job:
    """Wait (briefly yielding) until the stored job reaches a status."""
    async with asyncio.timeout(10):
        while True:
            job = await store.get(job_id)
            if job is not None and job.status is status:
                return job
            await asyncio.sleep(0.005)


async def test_cancel_queued_for_a_member_spares_their_running_job_and_everyone_else(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.behaviour_for = lambda _input: Behaviour(hold=hold)
    reason = "Canceled: the requester was banned from using the bot in this server."
    async with started_scheduler(
        store, client, reporter, running_per_guild=1, queued_per_member=5
    ) as scheduler:
        running = await submit(scheduler, user=10, prompt="running")
        await prediction_api.wait_for(lambda: prediction_api.creates == 1)
        mine = [await submit(scheduler, user=10, prompt=f"mine {n}") for n in range(2)]
        other = await submit(scheduler, user=11, prompt="someone else's")
        mine.append(await submit(scheduler, user=10, prompt="mine 2"))
        elsewhere = await submit(scheduler, guild=2, user=10, prompt="another server")
        assert scheduler.position(other.id) == 3

        assert await scheduler.cancel_queued_for(1, 10, reason) == 3
        assert scheduler.position(other.id) == 1
        assert [e.job.id for e in scheduler.snapshot(1)] == [running.id, other.id]
        assert sorted(job.id for job in reporter.canceled) == [job.id for job in mine]
        for job in mine:
            stored = await store.get(job.id)
            assert stored is not None and stored.status is JobStatus.CANCELED
            assert canceled_text(stored).endswith(f"\n🚫 {reason}")
        # Whoever waited behind them is shown their new place.
        await reporter.wait_for(
            lambda: any(i == other.id and u.position == 1 for i, u in reporter.statuses)
        )
        assert scheduler.pending_for(1, 10) == 1  # the running one is left to finish
        assert await scheduler.cancel_queued_for(1, 10, reason) == 0

        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 3)
    delivered = sorted(job.id for job, _ in reporter.delivered)
    assert delivered == sorted([running.id, other.id, elsewhere.id])
    prompts = {body["input"]["prompt"] for body in prediction_api.create_bodies}
    assert prompts == {"running", "someone else's", "another server"}
