"""Jobs shared by several processes on one PostgreSQL: claims, leases, take-over, events.

Each "process" here is what one bot process has: its own pool, store, membership connection
and leases, on one schema. A process that dies is one whose leases stop being renewed: the
tests move its leases' expiry into the past, as time would, rather than wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from bot.backends.base import Prediction
from bot.core.budgets import Budgets
from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.shared_queue import PUSHED_LOGS_KEPT, prediction_payload
from bot.storage.base import InvalidTransition
from bot.storage.leases import ClaimLimits, EventKind, ShardsTaken, SharedEvent
from bot.storage.postgres import PostgresStore, create_pool
from bot.storage.postgres_events import PAYLOAD_LIMIT, payload_of
from bot.storage.postgres_leases import PostgresLeases
from bot.storage.postgres_membership import PostgresMembership
from tests.postgres_server import fresh_schema

LEASE = 30.0
EVENT_TIMEOUT = 5.0


@dataclass
class Process:
    """One bot process's share of the database."""

    store: PostgresStore
    membership: PostgresMembership
    leases: PostgresLeases
    events: asyncio.Queue[SharedEvent]

    async def add(self, guild_id: int, requester_id: int = 10, *, cap: int = 100) -> Job | None:
        """Take a request, held here until released."""
        return await self.leases.add_held(
            guild_id=guild_id,
            channel_id=guild_id + 1000,
            requester_id=requester_id,
            request=GenerationRequest.create(f"a fox {guild_id}", seed=1),
            member_cap=cap,
        )

    async def queue(self, guild_id: int, requester_id: int = 10) -> Job:
        """Take a request and release it at once (its message exists)."""
        job = await self.add(guild_id, requester_id)
        assert job is not None
        await self.leases.release(job.id)
        return job

    async def next_event(self, kind: EventKind) -> SharedEvent:
        """Wait for the next announcement of a kind."""
        async with asyncio.timeout(EVENT_TIMEOUT):
            while True:
                event = await self.events.get()
                if event.kind is kind:
                    return event


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A fresh schema, migrated."""
    async with fresh_schema() as url:
        pool = await create_pool(url, size=1)
        try:
            await PostgresStore.open(pool)
        finally:
            await pool.close()
        yield url


@contextlib.asynccontextmanager
async def process(url: str) -> AsyncIterator[Process]:
    """Join the shared store as one more process; leave it at the end."""
    pool = await create_pool(url, size=3)
    membership = PostgresMembership(url, lease_seconds=LEASE)
    try:
        store = await PostgresStore.open(pool)
        await membership.join()
        leases = PostgresLeases(store, membership, lease_seconds=LEASE)
        events: asyncio.Queue[SharedEvent] = asyncio.Queue()
        leases.listen(events.put_nowait)
        yield Process(store, membership, leases, events)
    finally:
        await membership.leave()
        await pool.close()


async def die(url: str, who: Process) -> None:
    """Let a process's leases lapse, as they do once it stops renewing them."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "UPDATE job_leases SET expires_at = now() - interval '1 second' WHERE owner = $1",
            who.leases.owner,
        )
    finally:
        await connection.close()


async def claim(who: Process, limits: ClaimLimits, most: int) -> list[Job]:
    """Claim as a process does; return the jobs leased."""
    return (await who.leases.claim(limits, most)).jobs


def limits(total: int, per_guild: int = 1) -> ClaimLimits:
    """The same limits for every server."""
    return ClaimLimits(running_total=total, running_per_guild=lambda _guild: per_guild)


async def test_the_running_limits_hold_for_every_process_together(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        for guild in (1, 2, 3):
            for _ in range(3):
                await a.queue(guild)
        claimed_a = await claim(a, limits(total=4), most=2)
        claimed_b = await claim(b, limits(total=4), most=10)
        assert len(claimed_a) == 2 and len(claimed_b) == 1  # one per server: three servers
        assert sorted(job.guild_id for job in claimed_a + claimed_b) == [1, 2, 3]
        # One slot of four is left, whoever asks; a started job keeps holding its slot.
        await a.store.mark_submitted(claimed_a[0].id)
        assert len(await claim(b, limits(total=4, per_guild=2), most=10)) == 1
        assert await claim(a, limits(total=4, per_guild=2), most=10) == []


async def test_servers_take_turns_across_processes(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        first = [await a.queue(1) for _ in range(3)]
        second = [await b.queue(2) for _ in range(3)]
        order = []
        for claimer in (a, b, a, b, b, a):
            (job,) = await claim(claimer, limits(total=10, per_guild=10), most=1)
            order.append(job.id)
        # FIFO within each server, the servers in turn whoever asks.
        assert order == [
            first[0].id,
            second[0].id,
            first[1].id,
            second[1].id,
            first[2].id,
            second[2].id,
        ]


async def test_one_claim_may_take_several_jobs_of_a_server_within_its_limit(
    schema: str,
) -> None:
    async with process(schema) as a, process(schema) as b:
        first = [await a.queue(1) for _ in range(3)]
        second = await a.queue(2)
        claimed = await claim(b, limits(total=10, per_guild=2), most=10)
        assert [job.id for job in claimed] == [first[0].id, second.id, first[1].id]
        # Server 1 is at its limit; server 2 is not.
        later = await a.queue(2)
        assert [job.id for job in await claim(a, limits(total=10, per_guild=2), most=5)] == [
            later.id
        ]
        assert [job.id for job in await claim(a, limits(total=10, per_guild=3), most=5)] == [
            first[2].id
        ]


async def test_a_request_is_held_by_its_process_until_released(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        held = await a.add(1)
        assert held is not None
        assert await claim(b, limits(total=4), most=4) == []
        await a.leases.release(held.id)
        assert (await b.next_event(EventKind.FREED)).job_id == held.id
        assert [job.id for job in await claim(b, limits(total=4), most=4)] == [held.id]


async def test_a_hold_whose_process_died_lets_the_job_be_claimed(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        held = await a.add(1)
        assert held is not None
        await die(schema, a)
        assert [job.id for job in await claim(b, limits(total=4), most=4)] == [held.id]


async def test_the_member_cap_counts_requests_in_every_process(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        assert await a.add(1, requester_id=7, cap=2) is not None
        assert await b.add(1, requester_id=7, cap=2) is not None
        assert await b.add(1, requester_id=7, cap=2) is None
        assert await a.add(2, requester_id=7, cap=2) is not None  # another server
        assert await b.leases.pending_for(1, 7) == 2


async def test_started_jobs_of_a_dead_process_are_taken_over_and_it_is_fenced(
    schema: str,
) -> None:
    async with process(schema) as a, process(schema) as b:
        job = await a.queue(1)
        (claimed,) = await claim(a, limits(total=4), most=1)
        assert claimed.id == job.id
        await a.store.mark_submitted(job.id)
        await a.store.mark_running(job.id, "p-1")
        assert (await b.leases.take_over()).jobs == []  # a's lease lives
        await die(schema, a)
        (taken,) = (await b.leases.take_over()).jobs
        assert taken.id == job.id and taken.status is JobStatus.RUNNING
        assert (await a.leases.take_over()).jobs == []  # once
        # The old owner, if it was only slow, can no longer move the job.
        with pytest.raises(InvalidTransition, match="leased by another process"):
            await a.store.mark_delivering(job.id, predict_time=3.0)
        assert job.id not in (await a.leases.renew()).held
        assert job.id in (await b.leases.renew()).held
        delivering = await b.store.mark_delivering(job.id, predict_time=3.0)
        assert delivering.status is JobStatus.DELIVERING
        # Its status message is shown by whichever process, leases or not.
        assert (await a.store.set_request_message(job.id, 555)).request_message_id == 555


async def test_a_claim_that_never_started_goes_back_to_the_queue(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        job = await a.queue(1)
        await claim(a, limits(total=1), most=1)
        assert await claim(b, limits(total=1), most=1) == []  # the slot is a's
        await die(schema, a)
        assert (await b.leases.take_over()).jobs == []  # still queued: claimed, not started
        assert await b.leases.requeue_lapsed() == 1  # its lapsed claim is dropped
        assert [j.id for j in await claim(b, limits(total=1), most=1)] == [job.id]


async def test_cancels_reach_the_process_that_runs_the_job(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        waiting = await a.queue(1)
        canceled = await a.leases.cancel(waiting.id, "Canceled before it started.")
        assert canceled is not None and canceled.status is JobStatus.CANCELED
        assert canceled.error == "Canceled before it started."
        running = await a.queue(2)
        (claimed,) = await claim(b, limits(total=4), most=1)
        await b.store.mark_submitted(claimed.id)
        # Claimed by b: a cannot cancel it in the store, only ask b to.
        assert await a.leases.cancel(running.id, "no") is None
        assert await a.leases.request_cancel(running.id)
        assert (await b.next_event(EventKind.CANCEL)).job_id == running.id
        assert (await b.leases.renew()).cancel_wanted == {running.id}  # for a missed event
        await b.store.mark_canceled(running.id, "Canceled.")
        assert not await a.leases.request_cancel(running.id)  # ended: too late


async def test_a_cancel_of_an_orphaned_job_is_kept_for_whoever_takes_it_over(
    schema: str,
) -> None:
    async with process(schema) as a, process(schema) as b:
        job = await a.queue(1)
        await claim(a, limits(total=4), most=1)
        await a.store.mark_submitted(job.id)
        await die(schema, a)
        assert await b.leases.request_cancel(job.id)
        taken = await b.leases.take_over()
        assert [j.id for j in taken.jobs] == [job.id] and taken.cancel_wanted == {job.id}
        assert (await b.leases.renew()).cancel_wanted == {job.id}


async def test_a_second_process_is_refused_shards_another_one_runs(schema: str) -> None:
    async with process(schema) as a, process(schema) as b, process(schema) as c:
        await a.membership.take_shards(2, [0])
        with pytest.raises(ShardsTaken, match="shard 0 of 2"):
            await b.membership.take_shards(2, [1, 0])
        await c.membership.take_shards(2, [1])  # b let go of shard 1 when refused
        await a.membership.leave()  # its connection, and so its locks, end
        with pytest.raises(ShardsTaken, match="shard 1 of 2"):
            await b.membership.take_shards(2, [0, 1])
        await b.membership.take_shards(2, [0])


async def test_identifies_are_spaced_per_bucket_across_processes(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        assert await a.membership.reserve_identify(0, 5.0) == 0.0
        assert 4.0 < await b.membership.reserve_identify(0, 5.0) <= 5.0
        assert 9.0 < await a.membership.reserve_identify(0, 5.0) <= 10.0
        assert await b.membership.reserve_identify(1, 5.0) == 0.0  # another bucket


async def test_live_processes_are_counted_for_their_shares(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        assert await a.leases.live_processes() == 1
        assert await b.leases.live_processes() == 2
        assert await a.leases.live_processes() == 2
        await b.membership.leave()
        assert await a.leases.live_processes() == 1
    budgets = Budgets.local(api_per_minute=2400, discord_per_second=40)
    budgets.share_among(2)
    assert (budgets.api.per_minute, budgets.discord.per_second) == (1200, 20)  # type: ignore[attr-defined]
    budgets.share_among(1)
    assert (budgets.api.per_minute, budgets.discord.per_second) == (2400, 40)  # type: ignore[attr-defined]


async def test_a_pushed_prediction_reaches_the_other_processes(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        prediction = Prediction(id="p-9", status="processing", logs="x" * 10_000)
        data = prediction_payload(prediction)
        assert len(str(data["logs"])) == PUSHED_LOGS_KEPT  # the newest part of the logs
        await a.leases.announce(SharedEvent(EventKind.PUSH, data=data))
        heard = await b.next_event(EventKind.PUSH)
        assert heard.data is not None and Prediction.from_json(heard.data).id == "p-9"
        # One that cannot fit is announced without its data (the follower's polls catch up).
        huge = SharedEvent(EventKind.PUSH, data={"id": "p", "input": {"prompt": "y" * 9000}})
        assert len(payload_of(huge).encode()) < PAYLOAD_LIMIT and '"d"' not in payload_of(huge)


async def test_a_lapsed_lease_renewed_by_its_owner_is_not_taken_over(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        job = await a.queue(1)
        await claim(a, limits(total=4), 1)
        await a.store.mark_submitted(job.id)
        await die(schema, a)  # the database was away longer than the lease, say
        assert job.id in (await a.leases.renew()).held  # nobody took it meanwhile: still a's
        assert (await b.leases.take_over()).jobs == []


async def test_a_cancel_asked_of_a_claimer_that_died_comes_with_the_next_claim(
    schema: str,
) -> None:
    async with process(schema) as a, process(schema) as b:
        job = await a.queue(1)
        await claim(a, limits(total=4), 1)
        assert await b.leases.request_cancel(job.id)  # a claimed it: only asked of a
        await die(schema, a)
        assert await b.leases.requeue_lapsed() == 0  # the wish keeps its row
        claimed = await b.leases.claim(limits(total=4), most=4)
        assert [j.id for j in claimed.jobs] == [job.id] and claimed.cancel_wanted == {job.id}


async def test_just_after_an_outage_a_claim_leaves_lapsed_leases_to_their_owners(
    schema: str,
) -> None:
    async with process(schema) as a, process(schema) as b:
        claimed_by_a = await a.queue(1)
        await claim(a, limits(total=4), 1)
        fresh = await a.queue(2)
        await die(schema, a)
        # b was cut off too: it takes only what nobody held, and a renews its own.
        quiet = await b.leases.claim(limits(total=4), 4, take_lapsed=False)
        assert [job.id for job in quiet.jobs] == [fresh.id]
        assert claimed_by_a.id in (await a.leases.renew()).held


async def test_a_process_confirms_its_lease_before_it_pays_or_posts(schema: str) -> None:
    async with process(schema) as a, process(schema) as b:
        job = await a.queue(1)
        await claim(a, limits(total=4), 1)
        await a.store.mark_submitted(job.id)
        await a.store.confirm_lease(job.id)  # a's: nothing raised
        await die(schema, a)
        await b.leases.take_over()
        with pytest.raises(InvalidTransition, match="leased by another process"):
            await a.store.confirm_lease(job.id)
        await b.store.confirm_lease(job.id)
