"""FairQueue on its own: a plain data structure, driven without an event loop."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.core.fair_queue import FairQueue
from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.limits import GuildLimits, QueueFull

_REQUEST = GenerationRequest(prompt="a lighthouse in a storm", seed=7)
_ids = iter(range(1, 1_000_000))


def job(guild: int, user: int = 10, *, job_id: int | None = None, prompt: str = "") -> Job:
    """A queued job as the store would return it (ids rise like the store's)."""
    request = replace(_REQUEST, prompt=prompt) if prompt else _REQUEST
    return Job(
        id=next(_ids) if job_id is None else job_id,
        guild_id=guild,
        channel_id=guild * 100,
        requester_id=user,
        request=request,
        status=JobStatus.QUEUED,
        created_at=1000.0,
        updated_at=1000.0,
    )


def fixed(running: int = 1, queued_per_member: int = 3) -> FairQueue:
    """A queue with one limit for every server and a generous total."""
    return FairQueue(
        running_total=100, limits=lambda _guild: GuildLimits(running, queued_per_member)
    )


def drain(queue: FairQueue) -> list[Job]:
    """Start jobs one at a time, finishing each before the next, until none may start."""
    started: list[Job] = []
    while (next_job := queue.next_to_start()) is not None:
        started.append(next_job)
        queue.finish(next_job.id)
    return started


def test_add_returns_the_place_in_the_servers_own_queue() -> None:
    queue = fixed()
    assert queue.add(job(1)) == 1
    assert queue.add(job(1)) == 2
    assert queue.add(job(2)) == 1  # another server's queue is its own
    assert queue.add(job(1)) == 3


def test_fifo_within_a_server() -> None:
    queue = fixed()
    jobs = [job(1, prompt=f"A{n}") for n in range(4)]
    for queued in jobs:
        queue.add(queued)
    assert queue.queued(1) == jobs
    assert drain(queue) == jobs
    assert queue.is_empty


def test_servers_take_turns() -> None:
    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(5, 5))
    for guild, name, count in ((1, "A", 3), (2, "B", 1), (3, "C", 2)):
        for n in range(1, count + 1):
            queue.add(job(guild, prompt=f"{name}{n}"))
    order = [started.request.prompt for started in drain(queue)]
    assert order == ["A1", "B1", "C1", "A2", "C2", "A3"]


def test_only_one_may_start_while_the_total_is_taken() -> None:
    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(5, 5))
    first, second = job(1), job(2)
    queue.add(first)
    queue.add(second)
    assert queue.next_to_start() == first
    assert queue.next_to_start() is None  # the one slot is taken
    assert queue.position(second.id) == 1
    queue.finish(first.id)
    assert queue.next_to_start() == second


def test_total_limit_across_servers() -> None:
    queue = FairQueue(running_total=2, limits=lambda _guild: GuildLimits(5, 5))
    jobs = [job(guild) for guild in (1, 2, 3)]
    for queued in jobs:
        queue.add(queued)
    assert queue.next_to_start() == jobs[0]
    assert queue.next_to_start() == jobs[1]
    assert queue.next_to_start() is None
    assert queue.running_count == 2
    queue.finish(jobs[1].id)
    assert queue.next_to_start() == jobs[2]
    assert queue.running_count == 2


def test_per_server_running_limit() -> None:
    limits = {1: GuildLimits(running=2, queued_per_member=5)}
    queue = FairQueue(running_total=10, limits=lambda guild: limits.get(guild, GuildLimits(1, 5)))
    a = [job(1) for _ in range(3)]
    b = [job(2) for _ in range(2)]
    for queued in (*a, *b):
        queue.add(queued)
    started = {queue.next_to_start() for _ in range(5)}
    # Server 1 runs two at once, server 2 one; the rest wait.
    assert started == {a[0], a[1], b[0], None}
    assert queue.running_in(1) == [a[0], a[1]] and queue.running_in(2) == [b[0]]
    queue.finish(a[0].id)
    assert queue.next_to_start() == a[2]
    assert queue.next_to_start() is None  # server 2 still at its limit of one
    queue.finish(b[0].id)
    assert queue.next_to_start() == b[1]


def test_a_raised_server_limit_applies_at_the_next_start() -> None:
    limits = {1: GuildLimits(running=1, queued_per_member=5)}
    queue = FairQueue(running_total=10, limits=lambda guild: limits[guild])
    first, second = job(1), job(1)
    queue.add(first)
    queue.add(second)
    assert queue.next_to_start() == first
    assert queue.next_to_start() is None
    limits[1] = GuildLimits(running=2, queued_per_member=5)
    assert queue.next_to_start() == second


def test_a_held_job_blocks_its_own_server_only_until_released() -> None:
    queue = fixed(running=5)
    held, behind, other = job(1), job(1), job(2)
    queue.add(held, held=True)
    queue.add(behind)
    queue.add(other)
    assert queue.next_to_start() == other  # server 2 is not held up
    # The held job is at the head of server 1: nothing behind it jumps ahead.
    assert queue.next_to_start() is None
    assert queue.position(held.id) == 1 and queue.position(behind.id) == 2
    queue.release(held.id)
    assert queue.next_to_start() == held
    assert queue.next_to_start() == behind


def test_a_held_job_behind_the_head_waits_for_its_release() -> None:
    queue = fixed(running=5)
    first, held = job(1), job(1)
    queue.add(first)
    queue.add(held, held=True)
    assert queue.next_to_start() == first
    assert queue.next_to_start() is None
    queue.release(held.id)
    assert queue.next_to_start() == held


def test_removing_a_held_head_lets_the_next_one_start() -> None:
    queue = fixed(running=5)
    held, behind = job(1), job(1)
    queue.add(held, held=True)
    queue.add(behind)
    assert queue.next_to_start() is None
    assert queue.remove(held.id) == held
    assert queue.next_to_start() == behind


def test_remove_moves_the_rest_up() -> None:
    queue = fixed()
    a1, a2, a3 = job(1), job(1), job(1)
    for queued in (a1, a2, a3):
        queue.add(queued)
    assert queue.remove(a2.id) == a2
    assert queue.position(a3.id) == 2
    assert queue.position(a2.id) is None
    assert queue.get(a2.id) is None
    assert queue.remove(a2.id) is None  # not queued any more
    assert queue.queued(1) == [a1, a3]
    assert drain(queue) == [a1, a3]


def test_remove_does_not_touch_a_running_job() -> None:
    queue = fixed()
    running = job(1)
    queue.add(running)
    assert queue.next_to_start() == running
    assert queue.remove(running.id) is None
    assert queue.running_job(running.id) == running


def test_a_server_emptied_by_remove_leaves_the_rotation() -> None:
    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(5, 5))
    a, b, c = job(1, prompt="A"), job(2, prompt="B"), job(3, prompt="C")
    for queued in (a, b, c):
        queue.add(queued)
    queue.remove(a.id)
    assert sorted(queue.guilds_waiting()) == [2, 3]
    # Queued again, server 1 joins at the back of the rotation, not at its old place.
    queue.add(job(1, prompt="A again"))
    order = [started.request.prompt for started in drain(queue)]
    assert order == ["B", "C", "A again"]


def test_a_server_queued_again_after_running_dry_waits_its_turn() -> None:
    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(5, 5))
    queue.add(job(1, prompt="A1"))
    queue.add(job(2, prompt="B1"))
    queue.add(job(2, prompt="B2"))
    first = queue.next_to_start()
    assert first is not None and first.request.prompt == "A1"
    queue.finish(first.id)
    queue.add(job(1, prompt="A2"))
    order = [started.request.prompt for started in drain(queue)]
    assert order == ["B1", "A2", "B2"]


def test_remove_member_takes_only_that_members_queued_jobs_in_that_server() -> None:
    queue = fixed(running=1)
    running = job(1, user=10)
    queue.add(running)
    assert queue.next_to_start() == running
    mine1, theirs, mine2 = job(1, user=10), job(1, user=11), job(1, user=10)
    elsewhere = job(2, user=10)
    for queued in (mine1, theirs, mine2, elsewhere):
        queue.add(queued)
    assert queue.remove_member(1, 10) == [mine1, mine2]
    assert queue.queued(1) == [theirs]
    assert queue.position(theirs.id) == 1
    assert queue.queued(2) == [elsewhere]
    assert queue.running_job(running.id) == running  # running jobs are left to finish
    assert queue.remove_member(1, 10) == []
    assert queue.remove_member(99, 10) == []


def test_mark_running_counts_resumed_jobs_past_the_limits() -> None:
    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(1, 5))
    resumed1, resumed2, queued = job(1), job(1), job(2)
    queue.mark_running(resumed1)
    queue.mark_running(resumed2)  # both hold a slot upstream already
    queue.add(queued)
    assert queue.running_count == 2
    assert queue.running_in(1) == [resumed1, resumed2]
    assert queue.next_to_start() is None
    queue.finish(resumed1.id)
    assert queue.next_to_start() is None  # still one running: the total of one is taken
    queue.finish(resumed2.id)
    assert queue.next_to_start() == queued


def test_finish_frees_a_slot_once() -> None:
    queue = fixed()
    running = job(1)
    queue.add(running)
    assert queue.next_to_start() == running
    assert queue.finish(running.id) == running
    assert queue.finish(running.id) is None
    assert queue.running_count == 0
    assert queue.running_in(1) == []


def test_pending_for_counts_queued_and_running_per_member_and_server() -> None:
    queue = fixed(running=1)
    queue.add(job(1, user=10))
    queue.add(job(1, user=10))
    queue.add(job(1, user=11))
    queue.add(job(2, user=10))
    assert queue.pending_for(1, 10) == 2
    started = queue.next_to_start()
    assert started is not None and started.requester_id == 10
    assert queue.pending_for(1, 10) == 2  # one running, one queued
    assert queue.pending_for(1, 11) == 1
    assert queue.pending_for(2, 10) == 1
    assert queue.pending_for(3, 10) == 0
    queue.finish(started.id)
    assert queue.pending_for(1, 10) == 1


def test_member_cap_refuses_with_a_sentence() -> None:
    queue = fixed(running=1, queued_per_member=2)
    queue.add(job(1, user=10))
    queue.check_member_cap(1, 10)  # one of two: fine
    queue.add(job(1, user=10))
    with pytest.raises(QueueFull) as refused:
        queue.check_member_cap(1, 10)
    assert str(refused.value) == (
        "You already have 2 requests waiting in this server; "
        "wait for one to finish or cancel one first."
    )
    queue.check_member_cap(1, 11)  # someone else
    queue.check_member_cap(2, 10)  # another server


def test_member_cap_of_one_says_request_and_counts_running_jobs() -> None:
    queue = fixed(running=1, queued_per_member=1)
    queue.add(job(1, user=10))
    assert queue.next_to_start() is not None
    with pytest.raises(QueueFull) as refused:
        queue.check_member_cap(1, 10)
    assert str(refused.value).startswith("You already have 1 request waiting in this server;")


def test_member_cap_is_read_per_server() -> None:
    limits = {1: GuildLimits(1, 1), 2: GuildLimits(1, 3)}
    queue = FairQueue(running_total=4, limits=lambda guild: limits[guild])
    queue.add(job(1, user=10))
    queue.add(job(2, user=10))
    with pytest.raises(QueueFull):
        queue.check_member_cap(1, 10)
    queue.check_member_cap(2, 10)


def test_update_replaces_the_queued_copy_in_place() -> None:
    queue = fixed()
    first, second = job(1), job(1)
    queue.add(first)
    queue.add(second)
    shown = replace(second, request_message_id=5555)
    queue.update(shown)
    assert queue.get(second.id) == shown
    assert queue.position(second.id) == 2
    assert queue.queued(1) == [first, shown]
    assert drain(queue)[1].request_message_id == 5555


def test_update_replaces_the_running_copy() -> None:
    queue = fixed()
    queued = job(1)
    queue.add(queued)
    assert queue.next_to_start() == queued
    running = replace(queued, status=JobStatus.RUNNING, prediction_id="p1")
    queue.update(running)
    assert queue.get(queued.id) == running
    assert queue.running_job(queued.id) == running
    assert queue.running_in(1) == [running]
    assert queue.position(queued.id) is None  # running, not queued


def test_update_and_get_ignore_unknown_jobs() -> None:
    queue = fixed()
    stranger = job(1)
    queue.update(stranger)
    assert queue.get(stranger.id) is None
    assert queue.position(stranger.id) is None
    assert queue.running_job(stranger.id) is None
    assert queue.is_empty


def test_is_empty_only_with_nothing_queued_or_running() -> None:
    queue = fixed()
    assert queue.is_empty
    queued = job(1)
    queue.add(queued)
    assert not queue.is_empty
    assert queue.next_to_start() == queued
    assert not queue.is_empty  # running
    queue.finish(queued.id)
    assert queue.is_empty
    held = job(1)
    queue.add(held, held=True)
    assert not queue.is_empty
    queue.remove(held.id)
    assert queue.is_empty


def test_running_in_keeps_the_order_they_started() -> None:
    queue = fixed(running=5)
    late = job(1, job_id=900)
    early = job(1, job_id=300)
    last = job(1, job_id=600)
    for started in (late, early, last):
        queue.mark_running(started)
    queue.mark_running(job(2, job_id=100))
    assert queue.running_in(1) == [late, early, last]
    assert {j.id for j in queue.running_unordered(1)} == {900, 300, 600}
    queue.finish(early.id)
    assert queue.running_in(1) == [late, last]
    assert [j.id for j in queue.running_in(2)] == [100]
    assert queue.running_in(3) == []


def test_guilds_waiting_lists_servers_with_queued_jobs_only() -> None:
    queue = fixed()
    a, b = job(1), job(2)
    queue.add(a)
    queue.add(b)
    assert sorted(queue.guilds_waiting()) == [1, 2]
    assert queue.next_to_start() == a  # now running, nothing queued in server 1
    assert list(queue.guilds_waiting()) == [2]


def test_a_job_promised_the_one_free_slot_keeps_it_until_it_starts() -> None:
    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(1, 3))
    first, second = job(1), job(2)
    queue.add(first, held=True)
    queue.add(second, held=True)
    # Two answers written at once: the first is told it is starting, so the second is not.
    assert queue.promise_start(first.id)
    assert not queue.promise_start(second.id)
    queue.release(second.id)
    assert queue.next_to_start() is None  # the slot is the first's, though it is still held
    assert queue.promise_start(first.id)  # asked again, the promise stands
    queue.release(first.id)
    assert queue.next_to_start() == first
    queue.finish(first.id)
    assert queue.promise_start(second.id) and queue.next_to_start() == second


def test_a_promise_is_cleared_when_its_job_leaves_the_queue() -> None:
    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(1, 3))
    first, second = job(1), job(2)
    queue.add(first, held=True)
    queue.add(second)
    assert queue.promise_start(first.id)
    assert queue.next_to_start() is None
    assert queue.remove(first.id) == first
    assert queue.next_to_start() == second


def test_a_promise_counts_against_its_servers_running_limit() -> None:
    queue = FairQueue(running_total=5, limits=lambda _guild: GuildLimits(1, 3))
    head, behind = job(1), job(1)
    queue.add(head, held=True)
    queue.add(behind)
    assert queue.promise_start(head.id)
    assert not queue.promise_start(behind.id)
    assert queue.next_to_start() is None  # server 1's one slot is promised
