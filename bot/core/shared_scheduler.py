"""The scheduler of one process among several that share one queue in the database.

A request is stored held by the process that took it, until its message exists; the
database then decides which process starts which job (`SharedDispatcher`), a Cancel reaches
whichever process runs the job, and this process's fair queue only mirrors the waiting jobs
of its own servers, for their places and estimates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from bot.backends.base import Backend, Prediction
from bot.core.eta import SAMPLES_PER_KEY
from bot.core.jobs import Job, JobStatus
from bot.core.limits import member_cap_reached
from bot.core.reporter import CancelOutcome
from bot.core.scheduler import Scheduler
from bot.core.shared_queue import SharedDispatcher, SharedHooks
from bot.storage.base import Store
from bot.storage.leases import SharedJobs

log = logging.getLogger(__name__)

CANCELED_BEFORE_START = "Canceled before it started."
RELEASE_RETRY_SECONDS = 2.0
Shards = Callable[[], tuple[int, tuple[int, ...]]]
ReloadSettings = Callable[[int | None], Awaitable[None]]


class SharedScheduler(Scheduler):
    """A Scheduler whose jobs are claimed, leased and taken over through `SharedJobs`."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        *,
        shared: SharedJobs,
        shards: Shards,
        reload_settings: ReloadSettings,
        defer_dispatching: bool = False,
        lease_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **options: Any,
    ) -> None:
        super().__init__(store, backend, **options)
        # True: `start` leaves claiming and taking over to `start_dispatching`, called once
        # the process is ready, so that no lease taken lapses while it still loads.
        self._defer_dispatching = defer_dispatching
        self._shared = shared
        self._reload_settings = reload_settings
        self.queue.decides = False  # a mirror: the database decides who starts
        # Jobs taken off the mirror since it was last made again: a copy of the queues read
        # before they left must not bring them back.
        self._gone: set[int] = set()
        self._mirrored = False  # the first copy of the queues is shown as the messages are
        self._releasing: set[asyncio.Task[None]] = set()
        hooks = SharedHooks(
            start_claimed=self._start_claimed,
            resume=self._resume,
            lost=self._lost,
            running_ids=lambda: set(self._tasks),
            starting=lambda: self.queue.starting_count,
            holds_queue=lambda: self.outage.holds_queue(self.queue.running_count),
            has_capacity=backend.has_capacity,
            guild_running_limit=lambda guild_id: self.guild_limits(guild_id).running,
            queued_ids=self._queued_ids,
            mirror=self._mirror,
            claimed_elsewhere=self._claimed_elsewhere,
            ended_elsewhere=self._ended_elsewhere,
            elsewhere=self.queue.elsewhere,
            still_elsewhere=self._still_elsewhere,
            cancel_wanted=self.signals.want_cancel,
            settings_changed=self._settings_reloaded,
            shards=shards,
        )
        self.shared = SharedDispatcher(
            shared,
            hooks,
            running_total=self._limits.running_total,
            budgets=self.budgets,
            pushes=self.pushes,
            # Leases run on the database's clock, whatever clock the scheduler is given.
            sleep=lease_sleep,
        )

    async def start(self) -> None:
        """Mirror this process's queues, take over orphaned jobs, then claim work."""
        if self._started:
            return
        self._started = True
        self.delivery.clear_work_root()
        self.status.history.load(await self._store.recent_timings(SAMPLES_PER_KEY))
        if not self._defer_dispatching:
            await self.start_dispatching()

    async def start_dispatching(self) -> None:
        """Take over orphaned jobs, mirror this process's queues, then claim work."""
        if self.resumed:
            return
        await self.shared.start()
        # Their messages already show about this: only changes from now on are edited.
        self.status.mark_stale(show=False)
        self._mirrored = True
        for job_id in self._queued_ids():
            job = self.queue.get(job_id)
            if job is not None and job.request_message_id is None:
                self._announce_if_waiting(job_id)  # stored, but its message never was
        self.resumed = True

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, stop work, then end the leases so that the others take it over now."""
        await self.shared.pause()
        await super().stop(grace)
        for task in self._releasing:
            task.cancel()  # their holds end with the other leases, just below
        await asyncio.gather(*self._releasing, return_exceptions=True)
        await self.shared.stop()

    # Requests ---------------------------------------------------------------------------

    def _check_member_cap(self, guild_id: int, requester_id: int) -> None:
        """Nothing here: the store counts the member's jobs in every process (`_add_job`)."""

    async def _add_job(self, **fields: Any) -> Job:
        """Store a request held by this process until its message exists, within the cap."""
        cap = self.guild_limits(fields["guild_id"]).queued_per_member
        job = await self._shared.add_held(member_cap=cap, **fields)
        if job is None:
            raise member_cap_reached(cap)
        return job

    async def _released(self, job_id: int) -> None:
        """Let any process claim the job (until the store answers, this one keeps it held)."""
        try:
            await self._shared.release(job_id)
        except Exception:
            log.info("could not release job %s yet; trying again", job_id, exc_info=True)
            task = asyncio.create_task(self._release_patiently(job_id))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release_patiently(self, job_id: int) -> None:
        """Release a held job once the store answers (its hold is renewed until then)."""
        while not self._stopping:
            await asyncio.sleep(RELEASE_RETRY_SECONDS)
            try:
                await self._shared.release(job_id)
                return
            except Exception:
                continue  # logged once, above

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Cancel a job that no process started, or ask the one running it to stop it."""
        canceled = await self._shared.cancel(job_id, CANCELED_BEFORE_START)
        if canceled is not None:
            await self._canceled(canceled)
            return CancelOutcome.CANCELED
        running = self.queue.running_job(job_id)
        if running is not None:
            if not running.status.is_pending:
                return CancelOutcome.TOO_LATE
            self.signals.want_cancel(job_id)  # its task here sends the cancel upstream
            return CancelOutcome.CANCELING
        if await self._shared.request_cancel(job_id):
            return CancelOutcome.CANCELING
        return CancelOutcome.TOO_LATE

    async def cancel_queued_for(self, guild_id: int, requester_id: int, reason: str) -> int:
        """Cancel a member's jobs that no process started yet; return how many."""
        async with self._admission:  # after a request being admitted now
            mine = [
                job.id for job in self.queue.queued(guild_id) if job.requester_id == requester_id
            ]
            canceled = [
                job for job_id in mine if (job := await self._shared.cancel(job_id, reason))
            ]
        await asyncio.gather(*(self._canceled(job, publish=False) for job in canceled))
        if canceled:
            self.status.publish_positions(guild_id)
        return len(canceled)

    async def _canceled(self, job: Job, *, publish: bool = True) -> None:
        """A queued job was canceled in the store: take it off the mirror and show it."""
        queued = self.queue.remove(job.id)
        self._gone.add(job.id)
        self._forget(job.id)
        await self._outcomes.report_canceled(job)
        if queued is not None and publish:
            self.status.publish_positions(job.guild_id)
        self._update_idle()

    def push(self, prediction: Prediction) -> None:
        """Take a webhook delivery; one for a prediction followed elsewhere is passed on."""
        if not self.pushes.is_followed(prediction.id):
            self.shared.announce_push(prediction)
        super().push(prediction)

    def limits_changed(self, guild_id: int) -> None:
        """A server's settings changed here: tell the other processes, then act on it."""
        self.shared.announce_settings(guild_id)
        super().limits_changed(guild_id)

    async def _settings_reloaded(self, guild_id: int | None) -> None:
        """Another process changed a server's settings (None: any server): read them again."""
        await self._reload_settings(guild_id)
        if guild_id is not None:
            super().limits_changed(guild_id)
        else:
            self._dispatch()

    # Running jobs -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Ask the database for work soon (the claim holds the limits of every process)."""
        if not self._stopping:
            self.shared.kick()
        self._update_idle()

    def _finish(self, job_id: int) -> None:
        """Release a job's slot, and its lease, so that any process may claim the next."""
        ran_here = self.queue.running_job(job_id) is not None
        super()._finish(job_id)
        if ran_here:
            self.shared.let_go(job_id)

    def _start_claimed(self, job: Job) -> None:
        """Run a job this process claimed (it may come from another process's queue)."""
        if self._stopping or job.id in self._tasks:
            return  # stopping: its lease ends with the others' and another process claims it
        mirrored = self.queue.remove(job.id) is not None
        self._gone.add(job.id)
        self.queue.end_elsewhere(job.id)
        self.queue.mark_running(job)
        self._launch(job)
        if mirrored:
            self.status.publish_positions(job.guild_id)

    def _resume(self, job: Job) -> None:
        """Follow a started job taken over from a process that stopped renewing its lease."""
        if job.id not in self._tasks and not self._stopping:
            self.queue.end_elsewhere(job.id)
            self.queue.mark_running(job)
            self._launch(job)

    def _lost(self, job_id: int) -> None:
        """Another process holds this job's lease now: stop following it, without an end."""
        task = self._tasks.pop(job_id, None)
        job = self.queue.finish(job_id)
        if task is not None:
            task.cancel()
        if job is not None:
            self.pushes.unfollow(job.prediction_id)  # its webhooks go to the new owner now
        self.signals.forget(job_id)
        self._forget(job_id)
        self._update_idle()

    # The mirror -------------------------------------------------------------------------

    def _queued_ids(self) -> set[int]:
        """The queued jobs the mirror holds now."""
        queue = self.queue
        return {job.id for guild_id in queue.guilds_waiting() for job in queue.queued(guild_id)}

    def _mirror(self, queued: list[int], lacking: list[Job], known_before: set[int]) -> None:
        """Make the mirror hold these servers' unclaimed queued jobs, as the store read them.

        `queued`: their ids; `lacking`: those of them the mirror lacked, read whole;
        `known_before`: the mirror's jobs before the store was read. Only those may leave,
        as a request added meanwhile is not in the copy yet.
        """
        present = set(queued)
        gone, self._gone = self._gone, set()
        changed: set[int] = set()
        for guild_id in list(self.queue.guilds_waiting()):
            for job in self.queue.queued(guild_id):
                if job.id in known_before and job.id not in present:
                    self.queue.remove(job.id)  # claimed elsewhere, or canceled
                    self._forget(job.id)
                    changed.add(guild_id)
        for job in lacking:
            if job.id not in gone and self.queue.get(job.id) is None:
                # Requeued, resharded here, or queued by another process: at its place by age.
                self.queue.add(job, in_order=True)
                changed.add(job.guild_id)
        if self._mirrored:
            for guild_id in changed:
                self.status.publish_positions(guild_id)
        self._update_idle()

    def _claimed_elsewhere(self, job_id: int, guild_id: int) -> None:
        """A job of this process's servers started in another process: its places moved."""
        self._gone.add(job_id)  # also if a copy of the queues being read still has it
        if (job := self.queue.remove(job_id)) is not None:
            # Shown running (from about now) in this server's queue view and estimates.
            started = replace(job, status=JobStatus.SUBMITTED, submitted_at=self._wall_clock())
            self.queue.run_elsewhere(started)
            self._forget(job_id)
            self.status.publish_positions(guild_id)
            self._update_idle()

    def _ended_elsewhere(self, job_id: int) -> None:
        """A job another process ran let go of its lease: its server's places may move."""
        if (job := self.queue.end_elsewhere(job_id)) is not None:
            self.status.publish_positions(job.guild_id)

    def _still_elsewhere(self, jobs: list[Job]) -> None:
        """Keep only the jobs other processes still run (an announcement may have been lost)."""
        still = {
            job.id for job in jobs if not job.status.is_final and job.status is not JobStatus.QUEUED
        }
        for job_id in self.queue.elsewhere() - still:
            self._ended_elsewhere(job_id)
