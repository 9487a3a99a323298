"""The request budgets: what goes first, what is shed, and that the limits are never passed."""

from __future__ import annotations

import itertools

import pytest

from bench.figures import peak
from bot.core.budgets import (
    EDIT_PATIENCE,
    ApiUse,
    EditKind,
    LocalApiBudget,
    LocalDiscordBudget,
    SlidingWindow,
)
from bot.core.relay import StatusRelay
from bot.core.reporter import JobStatusUpdate, Stage
from bot.core.status import edit_kind
from tests.fakes.predictions import ManualClock
from tests.test_relay import FakeTime, settle_loop


def test_a_sliding_window_forgets_what_is_older_than_its_period() -> None:
    clock = ManualClock(0.0)
    window = SlidingWindow(1.0, clock.time)
    for _ in range(3):
        window.add()
    assert window.count() == 3 and window.room_in(3) == pytest.approx(1.0)
    clock.now = 0.5
    window.add()
    clock.now = 1.0
    assert window.count() == 1 and window.room_in(1) == pytest.approx(0.5)


async def test_progress_polls_get_what_ending_requests_leave_and_never_the_reserve() -> None:
    clock = ManualClock(0.0)
    budget = LocalApiBudget(100, clock=clock.time, sleep=clock.sleep)
    assert budget.progress_interval(1, 5.0) == 5.0  # never more often than asked
    # Ten jobs that may each end within the minute keep 40 back: the other 60 are theirs.
    assert budget.progress_interval(10, 5.0) == pytest.approx(10.0)
    for _ in range(30):
        await budget.spend(ApiUse.ENDING)
    # The last minute's ending requests foretell the next's: 30 left, one poll each 20 s.
    assert budget.progress_interval(10, 5.0) == pytest.approx(20.0)
    granted = 0
    while await budget.try_progress(10):
        granted += 1
    assert granted == 30  # ten jobs fill the minute up to 60
    while await budget.try_progress(1):
        granted += 1
    assert granted == 60  # one job, up to 90: a tenth of the budget is always kept back
    for _ in range(10):
        await budget.spend(ApiUse.ENDING)  # the reserve takes them without a wait
    assert clock.now == 0.0 and budget.waited == 0.0
    busy = LocalApiBudget(100, clock=clock.time, sleep=clock.sleep)
    for _ in range(90):
        await busy.spend(ApiUse.ENDING)
    assert busy.progress_interval(10, 5.0) == float("inf")  # nothing left for the bar
    assert not await busy.try_progress(1)


async def test_requests_that_must_go_wait_for_room_and_never_pass_the_limit() -> None:
    clock = ManualClock(0.0)
    budget = LocalApiBudget(60, creates_per_minute=10, clock=clock.time, sleep=clock.sleep)
    sent: list[float] = []
    created: list[float] = []
    for n in range(200):
        await budget.spend(ApiUse.ENDING)
        sent.append(clock.now)
        if n % 10 == 0 and await budget.try_progress(1):
            sent.append(clock.now)
        if n % 5 == 0:
            await budget.spend(ApiUse.CREATE)
            created.append(clock.now)
        clock.now += 0.05
    assert peak(sent, 60.0) <= 60
    assert peak(created, 60.0) <= 10
    assert budget.spent[ApiUse.ENDING] == 200 and budget.spent[ApiUse.CREATE] == 40


async def test_edits_are_shed_progress_first_then_estimates_then_places() -> None:
    clock = ManualClock(0.0)
    budget = LocalDiscordBudget(40, clock=clock.time)
    granted = {kind: 0 for kind in EditKind}
    # Every kind asks in turn, many times more than the second holds.
    for kind in itertools.islice(itertools.cycle(list(reversed(EditKind))), 400):
        if await budget.try_edit(kind, waited=0.0):
            granted[kind] += 1
            await budget.sending()
    assert granted[EditKind.PROGRESS] < granted[EditKind.ETA] < granted[EditKind.POSITION]
    assert granted[EditKind.POSITION] < granted[EditKind.STAGE]
    assert sum(granted.values()) <= 40 * 0.85
    # What is left above the top share is for results, which are never refused.
    for _ in range(6):
        await budget.note()
    assert sum(granted.values()) + 6 <= 40
    # An edit that waited long enough goes as a change of stage would.
    assert not await budget.try_edit(EditKind.PROGRESS, waited=0.0)
    clock.now = 1.0
    for _ in range(int(40 * 0.5)):
        assert await budget.try_edit(EditKind.POSITION, waited=0.0)
    assert not await budget.try_edit(EditKind.PROGRESS, waited=EDIT_PATIENCE - 0.1)
    assert await budget.try_edit(EditKind.PROGRESS, waited=EDIT_PATIENCE)


async def test_an_edit_counts_when_it_goes_so_a_busy_moment_cannot_bunch_them() -> None:
    clock = ManualClock(0.0)
    budget = LocalDiscordBudget(40, clock=clock.time)
    while await budget.try_edit(EditKind.STAGE, waited=0.0):
        pass
    clock.now = 2.0  # the loop was busy: none of them has gone yet
    assert not await budget.try_edit(EditKind.STAGE, waited=0.0)
    for _ in range(int(40 * 0.85)):
        await budget.sending()
    assert not await budget.try_edit(EditKind.STAGE, waited=0.0)  # they all go now
    clock.now = 3.0
    assert await budget.try_edit(EditKind.STAGE, waited=0.0)


def test_an_edit_is_classed_by_the_most_important_thing_it_changes() -> None:
    queued = JobStatusUpdate(Stage.QUEUED, position=3, eta=100)
    assert edit_kind(None, queued) is EditKind.POSITION  # not known what it shows
    assert edit_kind(None, JobStatusUpdate(Stage.STARTING)) is EditKind.STAGE
    assert edit_kind(queued, JobStatusUpdate(Stage.STARTING)) is EditKind.STAGE
    assert edit_kind(queued, JobStatusUpdate(Stage.QUEUED, position=2, eta=90)) is EditKind.POSITION
    assert edit_kind(queued, JobStatusUpdate(Stage.QUEUED, position=3, eta=90)) is EditKind.ETA
    sampling = JobStatusUpdate(Stage.SAMPLING, step=3, total=25, eta=100)
    assert edit_kind(sampling, JobStatusUpdate(Stage.SAMPLING, step=9, total=25, eta=100)) is (
        EditKind.PROGRESS
    )


async def test_the_relay_under_load_stays_in_budget_and_shows_the_latest_state() -> None:
    time = FakeTime()
    budget = LocalDiscordBudget(40, clock=time.clock)
    sent: list[tuple[float, int, JobStatusUpdate]] = []

    async def send(key: int, value: JobStatusUpdate) -> None:
        sent.append((time.now, key, value))

    relay: StatusRelay[int, JobStatusUpdate] = StatusRelay(
        send,
        interval=5.0,
        clock=time.clock,
        sleep=time.sleep,
        concurrency=64,
        budget=budget,
        kind_of=edit_kind,
    )
    stale: dict[EditKind, list[float]] = {kind: [] for kind in EditKind}
    relay.observer = lambda key, value, lag: stale[
        EditKind.PROGRESS if value.stage is Stage.SAMPLING else EditKind.POSITION
    ].append(lag)
    # A second's budget is 34 edits: 100 bars moving each second want 20 (one each per
    # interval), and 150 places moving at once every 10 s want them all at once.
    running = range(100)
    queued = range(1000, 1150)
    for key in queued:
        relay.publish(key, JobStatusUpdate(Stage.QUEUED, position=key - 999))
    for key in running:
        relay.publish(key, JobStatusUpdate(Stage.SAMPLING, step=0, total=25))
    for second in range(1, 41):
        await time.advance(1.0)
        for key in running:
            relay.publish(key, JobStatusUpdate(Stage.SAMPLING, step=second % 25, total=25))
        if second % 10 == 0:
            for key in queued:
                relay.publish(key, JobStatusUpdate(Stage.QUEUED, position=key - 999 - second // 10))
    for _ in range(30):
        await time.advance(1.0)
    await relay.close()
    assert peak([at for at, _, _ in sent], 1.0) <= 40 * 0.85
    # Places went out before progress ticks, yet no bar waited much past the patience.
    last: dict[int, tuple[float, JobStatusUpdate]] = {key: (at, v) for at, key, v in sent}
    assert all(last[key][1].position == key - 999 - 4 for key in queued)  # the latest place
    assert all(last[key][1].step == 40 % 25 for key in running)  # and the latest step
    # Bars gave way to places, and waited at most about the patience for it.
    assert budget.refused[EditKind.PROGRESS] > 0
    assert max(stale[EditKind.POSITION]) < max(stale[EditKind.PROGRESS])
    assert max(stale[EditKind.PROGRESS]) <= EDIT_PATIENCE + 5.0 + 1.0
    await settle_loop()


async def test_progress_ticks_are_paced_to_what_discord_can_show_for_every_running_job() -> None:
    clock = ManualClock(0.0)
    budget = LocalDiscordBudget(40, clock=clock.time)
    # Half of 40 a second for ticks: 200 running jobs get one each 10 s, 50 one each 2.5 s.
    assert budget.progress_interval(200) == pytest.approx(10.0)
    assert budget.progress_interval(50) == pytest.approx(2.5)
    # Results (room left for them twice) and changes of stage go first: 15 a second of them
    # lately leave 34 - 15 = 19 a second of the room an aged edit has, so 200 jobs' ticks slow.
    for second in range(10):
        clock.now = float(second)
        for _ in range(5):
            await budget.note()
        for _ in range(5):
            assert await budget.try_edit(EditKind.STAGE, waited=0.0)
            await budget.sending()
    assert budget.progress_interval(200) == pytest.approx(200 / 19)
    clock.now = 20.0  # a quiet spell: the pace is the share's again
    assert budget.progress_interval(200) == pytest.approx(10.0)


async def test_among_aged_edits_running_jobs_go_first_then_the_longest_waiting() -> None:
    time = FakeTime()
    budget = LocalDiscordBudget(40, clock=time.clock)
    sent: list[int] = []

    async def send(key: int, value: JobStatusUpdate) -> None:
        sent.append(key)

    relay: StatusRelay[int, JobStatusUpdate] = StatusRelay(
        send,
        interval=0.0,
        clock=time.clock,
        sleep=time.sleep,
        budget=budget,
        kind_of=edit_kind,
        aged_first=lambda update: update.stage is not Stage.QUEUED,
    )
    shown = {key: JobStatusUpdate(Stage.QUEUED, position=9) for key in range(1, 5)}
    shown[10] = shown[11] = JobStatusUpdate(Stage.SAMPLING, step=1, total=25)
    for key, update in shown.items():
        relay.prime(key, update)

    async def busy(seconds: float) -> None:
        """Keep every second full of results, so no edit may go until it has aged."""
        for _ in range(int(seconds * 2)):
            for _ in range(40):
                await budget.note()
            await time.advance(0.5)

    for key in (1, 2):
        relay.publish(key, JobStatusUpdate(Stage.QUEUED, position=8))  # places, oldest
    await busy(1.0)
    relay.publish(10, JobStatusUpdate(Stage.SAMPLING, step=5, total=25))  # a tick
    await busy(1.0)
    for key in (4, 3):
        relay.publish(key, JobStatusUpdate(Stage.QUEUED, position=8, eta=60))  # estimates
    relay.publish(11, JobStatusUpdate(Stage.SAMPLING, step=6, total=25, eta=30))
    await busy(EDIT_PATIENCE)
    assert sent == []
    await time.advance(1.0)  # room again, and every edit has aged
    assert sent == [10, 11, 1, 2, 4, 3]
    await relay.close()
