"""Queue places in status messages: near places on every move, far ones on larger moves."""

from __future__ import annotations

from bot.core.eta import TimingHistory
from bot.core.fair_queue import FairQueue
from bot.core.limits import GuildLimits
from bot.core.outage import OutageTracker
from bot.core.reporter import JobStatusUpdate, Stage
from bot.core.status import SHOWN_PLACES, StatusPublisher
from tests.fakes.predictions import ManualClock
from tests.test_fair_queue import job
from tests.test_relay import FakeTime, settle_loop


async def test_a_start_edits_the_near_places_and_only_the_far_ones_that_moved_a_fifth() -> None:
    time, clock = FakeTime(), ManualClock(0.0)
    sent: list[tuple[int, JobStatusUpdate]] = []

    async def send(job_id: int, update: JobStatusUpdate) -> None:
        sent.append((job_id, update))

    queue = FairQueue(running_total=1, limits=lambda _guild: GuildLimits(1, 100))
    publisher = StatusPublisher(
        send,
        queue=queue,
        outage=OutageTracker(clock.time, lambda _active: None),
        history=TimingHistory(),
        running_limit=lambda _guild: 1,
        interval=0.0,
        clock=time.clock,
        wall_clock=clock.time,
        sleep=time.sleep,
    )
    jobs = [job(1) for _ in range(30)]
    for queued in jobs:
        queue.add(queued)
    publisher.publish_positions(1)
    await settle_loop()
    assert len(sent) == 30  # every message shows its first place
    places = {job_id: update.position or 0 for job_id, update in sent}
    for moves in range(1, 6):
        sent.clear()
        started = queue.next_to_start()
        assert started is not None
        publisher.publish_positions(1)
        await settle_loop()
        edited = {job_id: update.position for job_id, update in sent}
        for place, waiting in enumerate(queue.queued(1), start=1):
            shown = places[waiting.id]
            if place <= SHOWN_PLACES or shown - place >= shown // 5:
                assert edited.get(waiting.id) == place, (moves, place, shown)
                places[waiting.id] = place
            else:
                assert waiting.id not in edited, (moves, place, shown)
        queue.finish(started.id)
    # Five moves: place 25 was edited once (to 20), place 30 not yet (it waits for six).
    assert places[jobs[24].id] == 20 and places[jobs[29].id] == 30
    assert places[jobs[5].id] == 1  # place 6 moved on every start: it is a near one now
    assert all(update.stage is Stage.QUEUED for _, update in sent)
    await publisher.close()
