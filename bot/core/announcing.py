"""Status messages for waiting jobs that never got one recorded (a crash, a failed edit).

Such a job is shown its place at once, while its interaction token lives, rather than when its
turn comes: a long queue could outlast the token, and then the first "thinking…" response
would stay beside a second message. The job is held in the queue until its message exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bot.core.fair_queue import FairQueue
from bot.core.jobs import Job
from bot.core.outcomes import JobOutcomes
from bot.core.reporter import JobStatusUpdate, Stage
from bot.core.runner import JobRunner
from bot.core.status import StatusPublisher


class WaitingAnnouncer:
    """Gives held queued jobs their status message in the background, then lets them start."""

    def __init__(
        self,
        *,
        queue: FairQueue,
        status: StatusPublisher,
        runner: JobRunner,
        outcomes: JobOutcomes,
        dispatch: Callable[[], None],
        released: Callable[[int], Awaitable[None]],
    ) -> None:
        self._queue = queue
        self._status = status
        self._runner = runner
        self._outcomes = outcomes
        self._dispatch = dispatch  # a released job may start now
        # Several processes: the job is held in the store too, until its message exists.
        self._released = released
        self.tasks: set[asyncio.Task[None]] = set()  # messages being made

    def announce_if_waiting(self, job_id: int) -> bool:
        """Show a queued job with no message its place now; False if it started or is gone."""
        job = self._queue.get(job_id)
        if job is None or self._queue.position(job_id) is None:
            return False  # it started (and announces itself as it does), or it is gone
        self._queue.hold(job_id)
        task = asyncio.create_task(self._announce(job), name=f"announce-{job_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _announce(self, job: Job) -> None:
        """Show a held queued job its place on a message, then release it."""
        try:
            update = self._status.queued_status(job.id) or JobStatusUpdate(Stage.QUEUED)
            announced = await self._runner.announce(job, update)
            if announced.request_message_id is not None and announced.status.is_final:
                # Canceled while its message was being made: say so on it.
                await self._outcomes.report_final(announced)
            elif (now := self._status.queued_status(job.id)) is not None:
                self._status.publish(job.id, now)  # the queue may have moved meanwhile
        finally:
            self._queue.release(job.id)
            await self._released(job.id)
            self._dispatch()
