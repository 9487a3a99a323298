"""PostgreSQL going away while jobs run: they wait with a note, and go on when it answers.

The real scheduler and client on the fake prediction API, with a real PostgreSQL store behind
a TCP relay that each test cuts at one step of a job's life and then restores. Whatever the
step, the job is delivered exactly once after the database returns, from one create.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.core.jobs import Job, JobStatus
from bot.core.reporter import JobResult, JobStatusUpdate, Stage
from bot.core.scheduler import Scheduler
from bot.core.store_outage import MAX_RETRY_SECONDS, retry_delay
from bot.storage.base import StorageUnavailable
from bot.storage.postgres import PostgresStore, create_pool
from bot.texts.member import stage_line
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.postgres_server import Relay, fresh_schema
from tests.scheduling import (
    RecordingReporter,
    request,
    short_wait_client,
    started_scheduler,
    submit,
)


@dataclass
class RelayedStore:
    """The bot's store through the relay, and a view of the same schema that never goes away."""

    store: PostgresStore
    relay: Relay
    direct: PostgresStore

    async def status(self, job_id: int) -> JobStatus:
        """A job's stored state, read past the relay."""
        job = await self.direct.get(job_id)
        assert job is not None
        return job.status


@pytest.fixture
async def db() -> AsyncIterator[RelayedStore]:
    """A fresh schema, its store through a relay the test cuts and restores."""
    async with fresh_schema() as url:
        relay, relayed_url = await Relay.to(url)
        pool = await create_pool(relayed_url, size=2)
        direct_pool = await create_pool(url, size=1)
        try:
            yield RelayedStore(
                await PostgresStore.open(pool), relay, await PostgresStore.open(direct_pool)
            )
        finally:
            with contextlib.suppress(Exception):
                await relay.cut()
            pool.terminate()
            await direct_pool.close()


class PostingReporter(RecordingReporter):
    """Records like RecordingReporter, and runs `after_post` once a result is posted."""

    after_post: Callable[[], object] | None = None

    async def deliver(self, job: Job, result: JobResult) -> int:
        message_id = await super().deliver(job, result)
        if self.after_post is not None:
            self.after_post()
        return message_id


def notes(reporter: RecordingReporter, job_id: int) -> list[int]:
    """Where in the job's status edits the database note was shown."""
    shown = [update for shown_id, update in reporter.statuses if shown_id == job_id]
    return [i for i, update in enumerate(shown) if update.stage is Stage.STORE_UNAVAILABLE]


async def finished(scheduler: Scheduler, timeout: float = 10) -> None:
    """Wait until nothing is queued or running."""
    async with asyncio.timeout(timeout):
        await scheduler.wait_idle()


async def assert_delivered_once(
    db: RelayedStore,
    reporter: RecordingReporter,
    api: FakePredictionAPI,
    job_id: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One create, one post, stored done with that post's id, no failure told or logged."""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert api.creates == 1
    assert len(reporter.delivered) == 1
    assert reporter.failures == []
    stored = await db.direct.get(job_id)
    assert stored is not None and stored.status is JobStatus.DONE
    assert stored.result_message_id == 9000  # the reporter's first (and only) post


async def test_cut_before_running_is_stored_waits_with_a_note_and_delivers_once(
    db: RelayedStore,
    client: PredictionClient,
    prediction_api: FakePredictionAPI,
    reporter: RecordingReporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=gate))
    async with started_scheduler(db.store, client, reporter) as scheduler:
        job = await submit(scheduler, reporter=reporter)
        # The create is held open until the prediction ends; cut while it is.
        await prediction_api.wait_for(lambda: prediction_api.latest.status == "processing")
        await db.relay.cut()
        gate.set()
        await reporter.wait_for(lambda: notes(reporter, job.id))
        assert await db.status(job.id) is JobStatus.SUBMITTED
        assert reporter.delivered == []
        await db.relay.start()
        await finished(scheduler)
    await assert_delivered_once(db, reporter, prediction_api, job.id, caplog)
    shown = [update.stage for shown_id, update in reporter.statuses if shown_id == job.id]
    assert shown[notes(reporter, job.id)[-1] + 1 :], "the note stayed after the database returned"


async def test_a_bot_stopped_while_a_job_waits_resumes_it_once_the_database_is_back(
    db: RelayedStore,
    client: PredictionClient,
    prediction_api: FakePredictionAPI,
    reporter: RecordingReporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=gate))
    async with started_scheduler(db.store, client, reporter) as scheduler:
        job = await submit(scheduler, reporter=reporter)
        await prediction_api.wait_for(lambda: prediction_api.latest.status == "processing")
        await db.relay.cut()
        gate.set()
        await reporter.wait_for(lambda: notes(reporter, job.id))
    # Stopped while it waited: still `submitted`, though its prediction ended (and was paid).
    assert await db.status(job.id) is JobStatus.SUBMITTED
    await db.relay.start()
    async with started_scheduler(db.store, client, reporter) as scheduler:
        await finished(scheduler)  # found its prediction in the API's list, not made again
    await assert_delivered_once(db, reporter, prediction_api, job.id, caplog)


async def test_cut_before_delivering_is_stored_waits_with_a_note_and_delivers_once(
    db: RelayedStore,
    http: aiohttp.ClientSession,
    prediction_api: FakePredictionAPI,
    reporter: RecordingReporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=gate))
    # Held one second only, so the job stores `running` and polls before the end.
    async with started_scheduler(
        db.store, short_wait_client(http, prediction_api), reporter
    ) as scheduler:
        job = await submit(scheduler, reporter=reporter)
        await reporter.wait_for(
            lambda: any(update.stage is Stage.SAMPLING for _, update in reporter.statuses)
        )
        assert await db.status(job.id) is JobStatus.RUNNING
        await db.relay.cut()
        gate.set()
        await reporter.wait_for(lambda: notes(reporter, job.id))
        assert await db.status(job.id) is JobStatus.RUNNING
        assert reporter.delivered == []
        await db.relay.start()
        await finished(scheduler)
    await assert_delivered_once(db, reporter, prediction_api, job.id, caplog)


async def test_cut_before_done_is_stored_posts_once_and_stores_it_when_back(
    db: RelayedStore,
    client: PredictionClient,
    prediction_api: FakePredictionAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = PostingReporter()
    cut = asyncio.Event()

    def cut_now() -> None:
        asyncio.ensure_future(db.relay.cut()).add_done_callback(lambda _: cut.set())

    reporter.after_post = cut_now
    async with started_scheduler(db.store, client, reporter) as scheduler:
        went_away = asyncio.Event()

        def changed(active: bool) -> None:
            if active:
                went_away.set()

        scheduler.patient.outage.on_change = changed
        job = await submit(scheduler, reporter=reporter)
        await asyncio.wait_for(cut.wait(), 10)
        await asyncio.wait_for(went_away.wait(), 10)  # `done` was tried, and not answered
        assert await db.status(job.id) is JobStatus.DELIVERING
        await db.relay.start()
        await finished(scheduler)
        assert not scheduler.patient.outage.active
    await assert_delivered_once(db, reporter, prediction_api, job.id, caplog)
    # The result is already posted: its message is not told about the database.
    assert notes(reporter, job.id) == []


async def test_a_done_whose_answer_was_lost_is_read_back_not_failed(
    db: RelayedStore,
    client: PredictionClient,
    prediction_api: FakePredictionAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = PostingReporter()
    lost: list[asyncio.Event] = []
    reporter.after_post = lambda: lost.append(db.relay.lose_next_update_answer())
    async with started_scheduler(db.store, client, reporter) as scheduler:
        job = await submit(scheduler, reporter=reporter)
        await reporter.wait_for(lambda: reporter.delivered)
        await asyncio.wait_for(lost[0].wait(), 10)
        # The commit was made; only its answer went missing with the connection.
        assert await db.status(job.id) is JobStatus.DONE
        await db.relay.start()
        await finished(scheduler)
    await assert_delivered_once(db, reporter, prediction_api, job.id, caplog)


async def test_a_submitted_whose_answer_was_lost_goes_on_with_one_create(
    db: RelayedStore,
    client: PredictionClient,
    prediction_api: FakePredictionAPI,
    reporter: RecordingReporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with started_scheduler(db.store, client, reporter) as scheduler:
        job, _ = await scheduler.submit(
            guild_id=1, channel_id=100, requester_id=10, request=request()
        )
        await scheduler.attach_message(job.id, 5000 + job.id)
        # Launched, not yet run: the next UPDATE is its `submitted`.
        lost = db.relay.lose_next_update_answer()
        await asyncio.wait_for(lost.wait(), 10)
        assert await db.status(job.id) is JobStatus.SUBMITTED
        await reporter.wait_for(lambda: notes(reporter, job.id))
        assert prediction_api.creates == 0
        await db.relay.start()
        await finished(scheduler)
    await assert_delivered_once(db, reporter, prediction_api, job.id, caplog)


async def test_a_request_during_the_outage_is_refused_at_once_and_nothing_waits(
    db: RelayedStore, client: PredictionClient, reporter: RecordingReporter
) -> None:
    async with started_scheduler(db.store, client, reporter) as scheduler:
        await db.relay.cut()
        with pytest.raises(StorageUnavailable):
            await scheduler.submit(guild_id=1, channel_id=100, requester_id=10, request=request())
        assert scheduler.pending_for(1, 10) == 0
        await db.relay.start()
        job = await submit(scheduler, reporter=reporter)
        await finished(scheduler)
    assert len(reporter.delivered) == 1
    assert reporter.delivered[0][0].id == job.id


def test_the_note_and_the_backoff() -> None:
    line = stage_line(JobStatusUpdate(Stage.STORE_UNAVAILABLE))
    assert "database is not answering" in line and "safe" in line
    delays = [retry_delay(attempt) for attempt in range(12)]
    assert delays == sorted(delays) and delays[0] < 1 and delays[-1] == MAX_RETRY_SECONDS
