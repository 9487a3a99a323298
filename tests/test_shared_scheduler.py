"""Two SharedSchedulers on one PostgreSQL schema and the fake prediction API.

What one process does is seen by the other through the database and its announcements: a
request taken by one runs in the other, a Cancel pressed on one stops the job the other runs,
an owner's settings change reaches both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bot.backends.replicate import PredictionClient
from bot.core.jobs import JobStatus
from bot.core.limits import QueueFull, SchedulerLimits
from bot.core.reporter import CancelOutcome
from bot.core.shared_scheduler import SharedScheduler
from bot.storage.postgres import PostgresStore, create_pool
from bot.storage.postgres_leases import PostgresLeases
from bot.storage.postgres_membership import PostgresMembership
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.postgres_server import fresh_schema
from tests.scheduling import RecordingReporter, short_sleep, submit

WAIT = 10.0


@dataclass
class Node:
    """One process: its scheduler, what it reported, and the settings reloads it made."""

    scheduler: SharedScheduler
    store: PostgresStore
    reporter: RecordingReporter
    reloads: list[int | None] = field(default_factory=list)
    reloaded: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A fresh schema."""
    async with fresh_schema() as url:
        yield url


@contextlib.asynccontextmanager
async def node(
    url: str, client: PredictionClient, shard: int, *, dispatching: bool = True
) -> AsyncIterator[Node]:
    """A process running shard `shard` of 2; `dispatching` False: it takes requests only."""
    pool = await create_pool(url, size=4)
    membership = PostgresMembership(url, lease_seconds=3.0)
    try:
        store = await PostgresStore.open(pool)
        await membership.join()
        await membership.take_shards(2, [shard])
        leases = PostgresLeases(store, membership, lease_seconds=3.0)
        reloads: list[int | None] = []
        reloaded = asyncio.Event()

        async def reload(guild_id: int | None) -> None:
            """Note a reread of the settings caused by an announcement."""
            if guild_id is not None:
                reloads.append(guild_id)
                reloaded.set()

        scheduler = SharedScheduler(
            store,
            client,
            shared=leases,
            shards=lambda: (2, (shard,)),
            reload_settings=reload,
            defer_dispatching=True,
            limits=SchedulerLimits(status_interval=0),
            sleep=short_sleep,
        )
        reporter = RecordingReporter()
        scheduler.attach(reporter)
        await scheduler.start()
        if dispatching:
            await scheduler.start_dispatching()
        try:
            yield Node(scheduler, store, reporter, reloads, reloaded)
        finally:
            await scheduler.stop(grace=0)
    finally:
        await membership.leave()
        await pool.close()


async def test_a_cancel_pressed_on_one_process_stops_the_job_the_other_runs(
    schema: str, client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with node(schema, client, 0, dispatching=False) as a, node(schema, client, 1) as b:
        job = await submit(a.scheduler)  # taken by a, whose queue only mirrors
        await prediction_api.wait_for(lambda: prediction_api.creates == 1, timeout=WAIT)
        assert (await b.store.get(job.id)).status is not JobStatus.QUEUED  # type: ignore[union-attr]
        assert await a.scheduler.cancel(job.id) is CancelOutcome.CANCELING
        await b.reporter.wait_for(lambda: b.reporter.canceled, timeout=WAIT)
        assert [canceled.id for canceled in b.reporter.canceled] == [job.id]
        assert prediction_api.cancels == 1  # b sent the cancel upstream, once
        stored = await a.store.get(job.id)
        assert stored is not None and stored.status is JobStatus.CANCELED
        hold.set()


async def test_a_queued_job_canceled_on_its_own_process_never_starts_anywhere(
    schema: str, client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    async with node(schema, client, 0, dispatching=False) as a:
        job = await submit(a.scheduler)
        assert a.scheduler.position(job.id) == 1  # the mirror shows its place
        assert await a.scheduler.cancel(job.id) is CancelOutcome.CANCELED
        assert a.scheduler.position(job.id) is None
        async with node(schema, client, 1) as b:
            await b.scheduler.shared.stop()  # one more claim, then nothing: it found none
        assert prediction_api.creates == 0 and [j.id for j in a.reporter.canceled] == [job.id]


async def test_the_member_cap_counts_the_jobs_another_process_runs(
    schema: str, client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.extend([Behaviour(hold=hold)] * 3)
    async with node(schema, client, 0, dispatching=False) as a, node(schema, client, 1) as b:
        for n in range(3):
            await submit(a.scheduler, prompt=f"fox {n}")
        await prediction_api.wait_for(lambda: prediction_api.creates >= 1, timeout=WAIT)
        with pytest.raises(QueueFull, match="already have 3 requests"):
            await submit(a.scheduler, prompt="one too many")
        hold.set()
        await b.reporter.wait_for(lambda: len(b.reporter.delivered) == 3, timeout=WAIT)


async def test_a_settings_change_on_one_process_is_read_again_by_the_other(
    schema: str, client: PredictionClient
) -> None:
    async with node(schema, client, 0) as a, node(schema, client, 1) as b:
        a.scheduler.limits_changed(4242)
        async with asyncio.timeout(WAIT):
            await b.reloaded.wait()
        assert 4242 in b.reloads


async def test_a_job_another_process_runs_is_shown_running_in_its_server_s_queue(
    schema: str, client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with node(schema, client, 0, dispatching=False) as a, node(schema, client, 1) as b:
        running = await submit(a.scheduler, prompt="runs in b")
        await prediction_api.wait_for(lambda: prediction_api.creates == 1, timeout=WAIT)
        waiting = await submit(a.scheduler, prompt="waits", user=11)  # one at a time per server

        def shown() -> list[tuple[int, int | None]]:
            return [(entry.job.id, entry.position) for entry in a.scheduler.snapshot(1)]

        # Learned from another process's announcement: nothing here to wait on but the view.
        async with asyncio.timeout(WAIT):
            while shown() != [(running.id, None), (waiting.id, 1)]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        hold.set()
        await b.reporter.wait_for(lambda: len(b.reporter.delivered) == 2, timeout=WAIT)
        async with asyncio.timeout(WAIT):
            while shown():  # noqa: ASYNC110 -- both ended elsewhere: announced, or read again
                await asyncio.sleep(0.01)
