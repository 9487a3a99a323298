"""Estimates and queue positions as the real scheduler shows them (fake prediction API)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bot.backends.replicate import PredictionClient
from bot.core.eta import Timing
from bot.core.jobs import DEFAULT_CHECKPOINT
from bot.core.reporter import CancelOutcome, JobStatusUpdate, Stage
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.scheduling import RecordingReporter, short_wait_client, started_scheduler, submit


def _updates(reporter: RecordingReporter, job_id: int) -> list[JobStatusUpdate]:
    """What the job's message showed: the answer to the command, then each edit."""
    first = [reporter.first_shown[job_id]] if job_id in reporter.first_shown else []
    return first + [update for shown, update in reporter.statuses if shown == job_id]


async def test_an_estimate_appears_once_there_is_history_and_not_before(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with started_scheduler(store, client, reporter, running_total=1) as scheduler:
        first = await submit(scheduler, user=1, prompt="first")
        second = await submit(scheduler, user=2, prompt="second")
        await prediction_api.wait_for(lambda: prediction_api.latest.status == "processing")
        status = scheduler.queued_status(second.id)
        assert status == JobStatusUpdate(Stage.QUEUED, position=1)  # no history: no estimate
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)
        await scheduler.wait_idle()
        assert _updates(reporter, first.id)
        assert all(update.eta is None for update in _updates(reporter, first.id))
        # The first run was measured before the second started: it was given an estimate.
        assert any(update.eta is not None for update in _updates(reporter, second.id))
        # Both runs were measured and stored.
        stored = await store.recent_timings(10)
        assert [(t.model, t.steps) for t in stored] == [(DEFAULT_CHECKPOINT, 10)] * 2
        assert all(t.run_time > 0 and t.queue_wait >= 0 for t in stored)

        hold = asyncio.Event()
        prediction_api.next_behaviours.append(Behaviour(hold=hold))
        before = time.time()
        third = await submit(scheduler, user=1, prompt="third", reporter=reporter)
        fourth = await submit(scheduler, user=2, prompt="fourth")
        await reporter.wait_for(
            lambda: any(u.stage is Stage.STARTING and u.eta for u in _updates(reporter, third.id))
        )
        running_eta = next(u.eta for u in _updates(reporter, third.id) if u.eta)
        waiting = scheduler.queued_status(fourth.id)
        assert waiting is not None and waiting.position == 1 and waiting.eta is not None
        # The fake's runs take a fraction of a second: shown rounded up to the next 10 s.
        assert before < running_eta <= before + 20 and running_eta % 10 == 0
        assert running_eta <= waiting.eta <= before + 30
        entries = scheduler.snapshot(1)
        assert [e.status.eta is not None for e in entries] == [True, True]
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 4)


async def test_history_is_loaded_at_start_and_the_queue_behind_adds_up(
    store: SQLiteStore,
    http: aiohttp.ClientSession,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    # An earlier run of the bot measured 30 s waiting for a GPU and 90 s running.
    await store.record_timing(Timing(DEFAULT_CHECKPOINT, 10, queue_wait=30, run_time=90))
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with started_scheduler(
        store, short_wait_client(http, prediction_api), reporter, running_total=1
    ) as scheduler:
        before = time.time()
        running = await submit(scheduler, user=1, prompt="running", reporter=reporter)
        behind = await submit(scheduler, user=2, prompt="behind")
        await reporter.wait_for(lambda: _updates(reporter, running.id))
        starting = _updates(reporter, running.id)[0]
        assert starting.stage is Stage.STARTING and starting.eta is not None
        assert before + 120 <= starting.eta <= time.time() + 150
        queued = scheduler.queued_status(behind.id)
        assert queued is not None and queued.eta is not None
        assert 90 <= queued.eta - starting.eta <= 180  # one more wait and run after it
        # Once the model's progress bar reports, it wins over history: the fake is quick.
        await reporter.wait_for(
            lambda: any(u.stage is Stage.SAMPLING for u in _updates(reporter, running.id))
        )
        sampling = next(u for u in _updates(reporter, running.id) if u.stage is Stage.SAMPLING)
        assert sampling.eta is not None and sampling.eta <= time.time() + 20
        # ... and the job behind is told its earlier estimate too.
        first_eta = queued.eta
        await reporter.wait_for(
            lambda: any(
                u.eta is not None and u.eta < first_eta for u in _updates(reporter, behind.id)
            )
        )
        # Held mid-sampling and polled again and again: the estimate shown stays put, so the
        # message is not edited on every poll.
        sent = len(reporter.statuses)
        polls = prediction_api.polls
        await prediction_api.wait_for(lambda: prediction_api.polls >= polls + 15)
        assert len(reporter.statuses) == sent
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)


async def test_waiting_jobs_are_told_their_new_place_when_one_ahead_is_canceled_or_finishes(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with started_scheduler(store, client, reporter, running_total=1) as scheduler:
        await submit(scheduler, user=1, prompt="running")
        await prediction_api.wait_for(lambda: prediction_api.latest.status == "processing")
        canceled = await submit(scheduler, user=2, prompt="canceled")
        second = await submit(scheduler, user=3, prompt="second")
        third = await submit(scheduler, user=4, prompt="third")
        assert [scheduler.position(j.id) for j in (canceled, second, third)] == [1, 2, 3]
        assert not _updates(reporter, third.id)  # its first message showed #3

        assert await scheduler.cancel(canceled.id) is CancelOutcome.CANCELED
        await reporter.wait_for(
            lambda: (
                JobStatusUpdate(Stage.QUEUED, position=1) in _updates(reporter, second.id)
                and JobStatusUpdate(Stage.QUEUED, position=2) in _updates(reporter, third.id)
            )
        )
        hold.set()  # the running job finishes; `second` starts
        await reporter.wait_for(
            lambda: [u.position for u in _updates(reporter, third.id)][-1:] == [1]
        )
        # (It also learnt an estimate when the first run was measured: same place, new text.)
        places = [u.position for u in _updates(reporter, third.id) if u.stage is Stage.QUEUED]
        assert set(places) == {2, 1} and places.index(1) > max(
            i for i, place in enumerate(places) if place == 2
        )
        await reporter.wait_for(lambda: len(reporter.delivered) == 3)
