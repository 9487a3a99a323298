"""The status publisher: the one place that decides what a member's status message says.

Queue positions, stages, progress and estimates become `JobStatusUpdate`s here and go to the
relay, which throttles and coalesces the edits. A measured run or an outage can change the
estimate of every queued job at once: those only mark queues stale, and one background
refresher re-estimates them a chunk at a time, so 10,000 queued jobs never stall the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bot.backends.base import Prediction
from bot.core.budgets import DiscordBudget, EditKind
from bot.core.eta import TimingHistory, instant, queue_finishes, running_finish, steady
from bot.core.fair_queue import FairQueue
from bot.core.jobs import Job, JobStatus
from bot.core.outage import OutageTracker
from bot.core.progress import Phase, Progress
from bot.core.relay import StatusRelay
from bot.core.reporter import JobStatusUpdate, QueueEntry, Stage

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Send = Callable[[int, JobStatusUpdate], Awaitable[None]]

# Queued jobs re-estimated per turn of the event loop when many servers' queues go stale at
# once (a measured run, an outage): 10,000 in one go would stall the loop for a second.
REFRESH_CHUNK = 256
# Places shown on every move; a job further back is edited once it has moved a fifth of the
# way (place 50 after 10 moves): a start in a long queue must not edit every message in it.
SHOWN_PLACES = 5


class StatusPublisher:
    """Turns where each job stands into status updates, and sends them through the relay."""

    def __init__(
        self,
        send: Send,
        *,
        queue: FairQueue,
        outage: OutageTracker,
        history: TimingHistory,
        running_limit: Callable[[int], int],
        interval: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        budget: DiscordBudget | None = None,
        has_capacity: Callable[[int], bool] | None = None,
    ) -> None:
        self._queue = queue
        self._has_capacity = has_capacity  # the backend's: whether one more could start now
        self._outage = outage
        self.history = history  # measured runs; the scheduler feeds it
        self._running_limit = running_limit
        self._interval = interval
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._budget = budget
        self._relay: StatusRelay[int, JobStatusUpdate] = StatusRelay(
            send,
            interval=interval,
            clock=clock,
            sleep=sleep,
            budget=budget,
            kind_of=edit_kind,
            aged_first=lambda update: update.stage is not Stage.QUEUED,
        )
        self._last_status: dict[int, JobStatusUpdate] = {}
        # Guilds whose queues wait for the refresher: True to show what changed, False to only
        # record it as shown (after a start, the messages already say about that).
        self._stale: dict[int, bool] = {}
        self._refreshing: dict[int, bool] = {}  # the pass under way
        self._refreshed_at = float("-inf")
        self.refresher: asyncio.Task[None] | None = None
        self._expected: dict[int, float | None] = {}  # running job -> raw expected finish
        self._shown_eta: dict[int, int] = {}  # job -> the rounded estimate last shown
        self._closed = False

    @property
    def relay(self) -> StatusRelay[int, JobStatusUpdate]:
        """The relay that sends the edits (its observer sees each one shown)."""
        return self._relay

    # What a message shows ---------------------------------------------------------------

    def publish(self, job_id: int, update: JobStatusUpdate) -> None:
        """Show a job's status (the relay drops repeats) and remember it for the queue view."""
        self._last_status[job_id] = update
        self._relay.publish(job_id, update)

    def prime(self, job_id: int, update: JobStatusUpdate) -> None:
        """Record what a message already shows (written by other means), so it is not resent."""
        self._relay.prime(job_id, update)

    def show_unavailable(self, job_id: int) -> None:
        """Say that the animation service cannot be reached just now."""
        self.publish(job_id, JobStatusUpdate(Stage.UNAVAILABLE))

    def show_store_unavailable(self, job_id: int) -> JobStatusUpdate | None:
        """Say that the bot's database is not answering; return what was shown before."""
        before = self._last_status.get(job_id)
        self.publish(job_id, JobStatusUpdate(Stage.STORE_UNAVAILABLE))
        return before

    def show_uploading(self, job_id: int) -> None:
        """Say that the result is being fetched and posted."""
        self._relay.publish(job_id, JobStatusUpdate(Stage.UPLOADING))

    def show_running(
        self,
        job: Job,
        stage: Stage,
        *,
        step: int = 0,
        total: int = 0,
        started_at: float | None = None,
        seconds_left: float | None = None,
    ) -> None:
        """Publish a running job's stage with its estimate; re-estimate the queue behind it."""
        now = self._wall()
        expected = running_finish(
            self.history.estimate(job.request.model, job.request.steps),
            now=now,
            submitted_at=job.submitted_at or now,
            started_at=started_at,
            seconds_left=seconds_left,
        )
        self._expected[job.id] = expected
        before = self._shown_eta.get(job.id)
        eta = self._steady_eta(job.id, expected, now)
        self.publish(job.id, JobStatusUpdate(stage, step=step, total=total, eta=eta))
        if eta != before:
            self.publish_positions(job.guild_id)

    def show_progress(self, job: Job, prediction: Prediction, progress: Progress) -> None:
        """Turn the progress read from a prediction's logs into a status update."""
        if prediction.status == "starting":
            self.show_running(job, Stage.STARTING)
            return
        stage = {
            Phase.WAITING: Stage.STARTING,
            Phase.SAMPLING: Stage.SAMPLING,
            Phase.RENDERING: Stage.RENDERING,
        }[progress.phase]
        seconds_left = progress.seconds_left if progress.phase is not Phase.WAITING else None
        if progress.phase is Phase.RENDERING and seconds_left is None:
            seconds_left = 0.0  # the last few frames
        self.show_running(
            job,
            stage,
            step=progress.step,
            total=progress.total,
            started_at=instant(prediction.started_at),
            seconds_left=seconds_left,
        )

    def progress_interval(self, running: int | None = None) -> float:
        """Seconds between one running job's progress edits that Discord's budget carries.

        `running`: how many jobs share it (by default, those running now). The follower
        polls no more often than this: a tick read but never shown is a request wasted.
        """
        if self._budget is None:
            return self._interval
        count = self._queue.running_count if running is None else running
        return max(self._interval, self._budget.progress_interval(count))

    def ran(self, job_id: int) -> None:
        """The job's prediction ended: its expected finish no longer applies."""
        self._expected.pop(job_id, None)

    def forget(self, job_id: int) -> None:
        """Drop what was shown for a job that left the queues."""
        self._last_status.pop(job_id, None)
        self._expected.pop(job_id, None)
        self._shown_eta.pop(job_id, None)
        self._relay.forget(job_id)

    async def settle(self, job_id: int) -> None:
        """Drop a job's unsent edits and wait for one in flight, before its final message."""
        await self._relay.settle(job_id)

    async def close(self) -> None:
        """Stop the refresher and the relay; nothing more is sent."""
        self._closed = True
        if self.refresher is not None:
            self.refresher.cancel()
            await asyncio.gather(self.refresher, return_exceptions=True)
        await self._relay.close()

    # Queue positions and estimates -------------------------------------------------------

    def publish_positions(self, guild_id: int, *, show: bool = True) -> None:
        """Show every waiting job in a guild its current place and estimate (and any outage).

        With `show` false, only record them as shown: the messages already say about that.
        """
        # This covers whatever made the guild stale, so the refresher need not come back to it.
        stale = self._stale.pop(guild_id, False)
        show = self._refreshing.pop(guild_id, False) or stale or show
        queue = self._queue.queued(guild_id)
        for job, status in zip(queue, self.waiting_statuses(guild_id), strict=True):
            if not show:
                self._last_status[job.id] = status
                self._relay.prime(job.id, status)
            elif self._worth_an_edit(job.id, status):
                self.publish(job.id, status)

    def _worth_an_edit(self, job_id: int, status: JobStatusUpdate) -> bool:
        """False for a small move of a place far back in the queue (see SHOWN_PLACES)."""
        last = self._last_status.get(job_id)
        if last is None or last.stage is not status.stage or last.position is None:
            return True
        if status.position is None or status.position <= SHOWN_PLACES:
            return True
        return abs(last.position - status.position) >= max(1, last.position // 5)

    def mark_stale(self, *, show: bool = True) -> None:
        """Have the refresher re-estimate every guild's queue soon; repeats coalesce."""
        for guild_id in self._queue.guilds_waiting():
            self._stale[guild_id] = show or self._stale.get(guild_id, False)
        if self._stale and not self._closed and self.refresher is None:
            self.refresher = asyncio.create_task(self._refresh_stale(), name="queue-refresher")

    def stop_refreshing(self) -> None:
        """Start no new refresher (the bot is stopping)."""
        self._closed = True

    async def _refresh_stale(self) -> None:
        """Re-estimate stale guilds a chunk at a time, yielding to the loop between chunks.

        A pass starts at most once per status interval: estimates that change on every
        measured run (several a second) cannot be edited into messages faster than that anyway.
        """
        try:
            while self._stale:
                wait = self._refreshed_at + self._interval - self._clock()
                if wait > 0:
                    await self._sleep(wait)
                self._refreshing, self._stale = self._stale, {}
                done = 0
                for guild_id in list(self._refreshing):
                    if guild_id not in self._refreshing:
                        continue  # shown meanwhile, as its queue moved
                    # Takes it out of `_refreshing` and `_stale`; shows it if either says so.
                    self.publish_positions(guild_id, show=False)
                    done += len(self._queue.queued(guild_id)) + 1
                    if done >= REFRESH_CHUNK:
                        done = 0
                        await asyncio.sleep(0)
                self._refreshed_at = self._clock()
        finally:
            self._refreshing = {}
            self.refresher = None

    def queued_status(self, job_id: int) -> JobStatusUpdate | None:
        """What a queued job's message should say now (place and estimate), or None.

        A job that starts as soon as it is let go is shown starting (see `waiting_statuses`).
        """
        job = self._queue.get(job_id)
        position = self._queue.position(job_id)
        if job is None or position is None:
            return None
        return self.waiting_statuses(job.guild_id)[position - 1]

    def snapshot(self, guild_id: int) -> list[QueueEntry]:
        """A guild's running then waiting jobs, with what each one's message says."""
        running = [
            QueueEntry(job, None, self._running_status(job))
            for job in self._queue.running_in(guild_id)
        ]
        queue = self._queue.queued(guild_id)
        statuses = self.waiting_statuses(guild_id)
        waiting = [
            QueueEntry(job, index + 1, status)
            for index, (job, status) in enumerate(zip(queue, statuses, strict=True))
        ]
        return running + waiting

    def waiting_statuses(self, guild_id: int) -> list[JobStatusUpdate]:
        """The status of each queued job of a guild, in queue order."""
        queue = self._queue.queued(guild_id)
        if self._outage.active:
            return [
                JobStatusUpdate(Stage.UNAVAILABLE, position=index + 1)
                for index in range(len(queue))
            ]
        now = self._wall()
        running_left = [
            self._running_left(job, now) for job in self._queue.running_unordered(guild_id)
        ]
        finishes = queue_finishes(
            running_left,
            [self.history.estimate(job.request.model, job.request.steps) for job in queue],
            self._running_limit(guild_id),
        )
        statuses = [
            JobStatusUpdate(
                Stage.QUEUED,
                position=index + 1,
                eta=self._steady_eta(job.id, None if finish is None else now + finish, now),
            )
            for index, (job, finish) in enumerate(zip(queue, finishes, strict=True))
        ]
        if queue and self._queue.promise_start(queue[0].id, self._has_capacity):
            # It starts the moment it is let go: its first status is the state it will be in,
            # not a `Queued` that the next edit takes back.
            head = queue[0]
            estimate = self.history.estimate(head.request.model, head.request.steps)
            expected = running_finish(estimate, now=now, submitted_at=now)
            statuses[0] = JobStatusUpdate(
                Stage.STARTING, eta=self._steady_eta(head.id, expected, now)
            )
        return statuses

    def _running_left(self, job: Job, now: float) -> float | None:
        """Seconds until a running job should finish, or None if there is no telling."""
        if job.status is JobStatus.DELIVERING:
            return 0.0
        if job.id in self._expected:
            expected = self._expected[job.id]
        else:  # launched, but its task has not said anything yet
            expected = running_finish(
                self.history.estimate(job.request.model, job.request.steps),
                now=now,
                submitted_at=job.submitted_at or now,
            )
        return None if expected is None else max(0.0, expected - now)

    def _running_status(self, job: Job) -> JobStatusUpdate:
        """What a running job's message says, for the queue view."""
        if job.status is JobStatus.DELIVERING:
            return JobStatusUpdate(Stage.UPLOADING)
        last = self._last_status.get(job.id)
        if last is None or last.stage is Stage.QUEUED:
            return JobStatusUpdate(Stage.STARTING)
        return last

    def _steady_eta(self, job_id: int, expected: float | None, now: float) -> int | None:
        """Round an expected finish for display, keeping the last one shown if still close."""
        if expected is None:
            self._shown_eta.pop(job_id, None)
            return None
        eta = steady(self._shown_eta.get(job_id), expected, now)
        self._shown_eta[job_id] = eta
        return eta


def edit_kind(shown: JobStatusUpdate | None, wanted: JobStatusUpdate) -> EditKind:
    """What an edit from `shown` to `wanted` changes: the lesser changes are shed first."""
    if shown is None:
        # Not known what the message shows (a restart): a place is still only a place.
        return EditKind.POSITION if wanted.stage is Stage.QUEUED else EditKind.STAGE
    if shown.stage is not wanted.stage:
        return EditKind.STAGE
    if shown.position != wanted.position:
        return EditKind.POSITION
    if shown.eta != wanted.eta:
        return EditKind.ETA
    return EditKind.PROGRESS
