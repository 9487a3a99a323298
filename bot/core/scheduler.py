"""The scheduler: the thin facade the Discord side talks to.

It owns the tasks (which jobs run, starting the next when one ends, stopping cleanly) and
takes members' requests; `wiring.py` builds and connects the parts it drives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.backends.base import Backend, Prediction
from bot.core.budgets import Budgets
from bot.core.eta import SAMPLES_PER_KEY, TimingHistory
from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.limits import GuildLimits, GuildPolicy, QueueFull, SchedulerLimits
from bot.core.metering import MeteredReporter
from bot.core.polling import PollPlanner
from bot.core.reporter import CancelOutcome, JobReporter, JobStatusUpdate, QueueEntry
from bot.core.wiring import SchedulerHooks, build_parts
from bot.observability.logs import bind_job
from bot.observability.metrics import BotMetrics
from bot.storage.base import Store

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class Scheduler:
    """Fair FIFO queues per guild, with global and per-guild limits on running predictions."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        *,
        limits: SchedulerLimits | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        work_root: Path | None = None,
        policy: GuildPolicy | None = None,
        history: TimingHistory | None = None,
        planner: PollPlanner | None = None,
        budgets: Budgets | None = None,
        metrics: BotMetrics | None = None,
    ) -> None:
        self._store = store
        self.metrics = metrics if metrics is not None else BotMetrics()  # its own registry
        self._backend = backend
        self._policy = policy
        self._limits = limits or SchedulerLimits()
        self.budgets = budgets or Budgets.local(clock=clock, sleep=sleep)
        self._clock = clock
        self._wall_clock = wall_clock
        self._reporter: JobReporter | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._admission = asyncio.Lock()
        self._started = False
        self._stopping = False
        self.resumed = False  # every stored job has been picked up again (readiness)
        self.idle = asyncio.Event()
        self.idle.set()

        hooks = SchedulerHooks(
            guild_limits=self.guild_limits,
            outage_changed=self._outage_changed,
            send_status=self._send_status,
            reporter=self._require_reporter,
            dispatch=self._dispatch,
            stopping=lambda: self._stopping,  # read at each delivery, not now
            released=self._released,
        )
        parts = build_parts(
            store,
            backend,
            hooks,
            limits=self._limits,
            budgets=self.budgets,
            metrics=self.metrics,
            history=history if history is not None else TimingHistory(),
            planner=planner,
            clock=clock,
            wall_clock=wall_clock,
            sleep=sleep,
            work_root=work_root,
        )
        self.queue, self.outage, self.status = parts.queue, parts.outage, parts.status
        self.signals, self.pushes, self.planner = parts.signals, parts.pushes, parts.planner
        self.patient, self._outcomes = parts.patient, parts.outcomes
        self.delivery, self.runner, self.announcer = parts.delivery, parts.runner, parts.announcer

    def attach(self, reporter: JobReporter) -> None:
        """Set who tells members about their jobs (each message counted in Discord's budget)."""
        self._reporter = MeteredReporter(reporter, self.budgets.discord)

    async def start(self) -> None:
        """Resume every unfinished job recorded in the store, then start dispatching."""
        if self._started:
            return
        self._started = True
        self.delivery.clear_work_root()
        self.status.history.load(await self._store.recent_timings(SAMPLES_PER_KEY))
        jobs = await self._store.unfinished()
        resumed = 0
        for job in jobs:
            if job.status is JobStatus.QUEUED:
                self.queue.add(job)
                self.idle.clear()
            else:
                # It already holds a slot upstream: follow it, even past the limits.
                self.queue.mark_running(job)
                self._launch(job)
                resumed += 1
        if jobs:
            log.info("resumed %d running and %d queued jobs", resumed, len(jobs) - resumed)
        # Their messages already show about this: note it, so that only changes are edited,
        # rather than edit 10,000 messages at once. The refresher spreads out the work; the
        # queues that move now are shown at once (and so are not merely noted later).
        self.status.mark_stale(show=False)
        self._dispatch()
        for job in jobs:
            if job.status is JobStatus.QUEUED and job.request_message_id is None:
                # Stored, but its message never was (a crash after the acknowledgement).
                self._announce_if_waiting(job.id)
        self.resumed = True

    async def stop(self, grace: float = 5.0) -> None:
        """Stop work; every job stays recorded where it stood and resumes on the next start."""
        self._stopping = True
        self.status.stop_refreshing()
        deadline = self._clock() + grace
        # Let posts in flight finish (results, and status messages being made for waiting
        # jobs), so that none is posted again after the restart.
        while posting := [
            *(self._tasks[i] for i in self.delivery.posting if i in self._tasks),
            *self.announcer.tasks,
        ]:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            await asyncio.wait(posting, timeout=remaining)
        tasks = [*self._tasks.values(), *self.announcer.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Not cancelled: each is one quick write, and the store closes after this returns.
        await asyncio.gather(*self.runner.writes, return_exceptions=True)
        await self.status.close()

    # Requests -------------------------------------------------------------------------

    async def submit(
        self,
        *,
        guild_id: int,
        channel_id: int,
        requester_id: int,
        request: GenerationRequest,
        parent_job_id: int | None = None,
        upload_limit: int | None = None,
        interaction_token: str | None = None,
    ) -> tuple[Job, int]:
        """Queue a request; return the job and its place in the guild's queue (1 = next).

        The caller shows the request, then calls `attach_message`, which lets the job start.
        `interaction_token` is stored with the job until then, so that a job whose message id
        never got stored (a crash) can still edit the interaction's response (`announce`).
        """
        async with self._admission:
            if self._stopping:
                raise QueueFull("The bot is restarting; please try again in a moment.")
            self._check_member_cap(guild_id, requester_id)
            if self._policy is not None:
                # Under the admission lock: two quick requests cannot both take the last slot.
                await self._policy.admit(guild_id, requester_id)
            job = await self._add_job(
                guild_id=guild_id,
                channel_id=channel_id,
                requester_id=requester_id,
                request=request,
                parent_job_id=parent_job_id,
                upload_limit=upload_limit,
                interaction_token=interaction_token,
            )
            # It starts only once its status message exists (attach_message), so every
            # update, and a failure in the first second, has a message to land on.
            position = self.queue.add(job, held=True)
            self.idle.clear()
        return job, position

    def _check_member_cap(self, guild_id: int, requester_id: int) -> None:
        """Raise QueueFull if the member may queue no more here."""
        self.queue.check_member_cap(guild_id, requester_id)

    async def _add_job(self, **fields: Any) -> Job:
        """Store a new queued job (the fields of `JobRecords.add_job`)."""
        return await self._store.add_job(**fields)

    async def _released(self, job_id: int) -> None:
        """A job's message is recorded (or will never be): it may start, here or elsewhere."""

    async def attach_message(
        self, job_id: int, message_id: int | None, *, shown: JobStatusUpdate | None = None
    ) -> None:
        """Record the message showing a job (`shown` is what it says now) and let the job start."""
        if message_id is None:
            # Released once the announcer made its message (a shared store's hold as well).
            self.queue.release(job_id)
            self._dispatch()  # if its turn has come, it starts and posts a message of its own
            if not self._announce_if_waiting(job_id):
                await self._released(job_id)  # nothing to announce (started, or canceled)
            return
        try:
            job = await self.patient.set_request_message(job_id, message_id)
            self.queue.update(job)
            # Only now may it start: released before the write, another job's end could
            # launch it with no message id, and it would post a second status message.
            self.queue.release(job_id)
            if job.status.is_final:
                # Canceled from its message before we got here: say so on it.
                await self._outcomes.report_final(job)
                return
            if shown is not None:
                self.status.prime(job_id, shown)
            if self.queue.position(job_id) is not None:
                self.status.publish_positions(job.guild_id)
        finally:
            self.queue.release(job_id)
            await self._released(job_id)
            self._dispatch()

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Remove a queued job, or ask the API to stop a running one."""
        queued = self.queue.remove(job_id)
        if queued is not None:
            self._forget(job_id)
            await self._outcomes.cancel(job_id, "Canceled before it started.")
            self.status.publish_positions(queued.guild_id)
            self._update_idle()
            return CancelOutcome.CANCELED
        running = self.queue.running_job(job_id)
        if running is None or not running.status.is_pending:
            return CancelOutcome.TOO_LATE
        # The job's own task sends the cancel upstream, so it is sent once and retried there.
        self.signals.want_cancel(job_id)
        return CancelOutcome.CANCELING

    async def cancel_queued_for(self, guild_id: int, requester_id: int, reason: str) -> int:
        """Cancel a member's queued jobs in a guild, recording `reason`; return how many.

        Jobs already running are left to finish. Store whatever stops the member queueing
        more (a ban) before calling this: a request being admitted meanwhile is then queued
        first, under the admission lock, and canceled here with the rest.
        """
        async with self._admission:
            canceled = [job.id for job in self.queue.remove_member(guild_id, requester_id)]
            for job_id in canceled:
                self._forget(job_id)
        if not canceled:
            return 0
        # Everyone behind them moves up at once; then each canceled message is edited.
        self.status.publish_positions(guild_id)
        await asyncio.gather(*(self._outcomes.cancel(job_id, reason) for job_id in canceled))
        self._update_idle()
        return len(canceled)

    def _announce_if_waiting(self, job_id: int) -> bool:
        """Show a queued job with no message its place now, while its token lives.

        True if it is being announced (and is released once it is).
        """
        return not self._stopping and self.announcer.announce_if_waiting(job_id)

    def push(self, prediction: Prediction) -> None:
        """Take a prediction the backend pushed (a webhook) and wake the job following it."""
        self.pushes.push(prediction)

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running."""
        await self.idle.wait()

    # What members see -----------------------------------------------------------------

    def guild_limits(self, guild_id: int) -> GuildLimits:
        """The server's own limits, or the global ones when there is no policy."""
        if self._policy is not None:
            return self._policy.limits(guild_id)
        return GuildLimits(self._limits.running_per_guild, self._limits.queued_per_member)

    def capacity_changed(self) -> None:
        """The backend may have room for another job (a GPU server freed): wake who waits."""
        self.signals.capacity_freed()
        self._dispatch()

    def limits_changed(self, guild_id: int) -> None:
        """A server's limits changed: start what now fits and show new estimates."""
        self._dispatch()
        self.status.publish_positions(guild_id)

    def pending_for(self, guild_id: int, requester_id: int) -> int:
        """Count a member's queued and running jobs in a guild."""
        return self.queue.pending_for(guild_id, requester_id)

    def position(self, job_id: int) -> int | None:
        """Return a queued job's place in its guild's queue (1 = next), or None."""
        return self.queue.position(job_id)

    def snapshot(self, guild_id: int) -> list[QueueEntry]:
        """Return a guild's running then waiting jobs, with what each one's message says."""
        return self.status.snapshot(guild_id)

    def queued_status(self, job_id: int) -> JobStatusUpdate | None:
        """Return what a queued job's message should say now (place and estimate), or None."""
        return self.status.queued_status(job_id)

    # Running jobs ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start queued jobs, round-robin across guilds, while the limits allow."""
        if self._stopping:
            return
        started: set[int] = set()
        while not self.outage.holds_queue(self.queue.running_count):
            job = self.queue.next_to_start(self._backend.has_capacity)
            if job is None:
                break
            started.add(job.guild_id)
            self._launch(job)
        for guild_id in started:
            self.status.publish_positions(guild_id)
        self._update_idle()

    def _launch(self, job: Job) -> None:
        """Start the task that carries a (running) job to its end."""
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self.idle.clear()

    async def _run(self, job: Job) -> None:
        """Run a job, then free its slot (unless the bot is stopping: it resumes on start)."""
        bind_job(job.id, job.guild_id, job.prediction_id)  # on this task's log lines
        try:
            await self.runner.run(job)
        finally:
            if not self._stopping:
                self._finish(job.id)

    def _finish(self, job_id: int) -> None:
        """Release a job's slot and let the next one start."""
        job = self.queue.finish(job_id)
        self._tasks.pop(job_id, None)
        if job is not None:
            self.pushes.unfollow(job.prediction_id)
        self.signals.forget(job_id)
        self._forget(job_id)
        if self.queue.running_count == 0 and self.outage.active:
            # The job that was probing the outage is gone: let the next one probe.
            self.outage.leave()
        self._dispatch()

    def _forget(self, job_id: int) -> None:
        """Drop what was shown and measured for a job that left the queues."""
        self.status.forget(job_id)
        self.planner.forget(job_id)

    def _outage_changed(self, active: bool) -> None:
        """An outage began (hold the queues) or ended (start queued work again)."""
        self.status.mark_stale()
        if not active:
            self._dispatch()

    def _update_idle(self) -> None:
        """Set the idle event when nothing is queued or running."""
        if self.queue.is_empty:
            self.idle.set()

    async def _send_status(self, job_id: int, update: JobStatusUpdate) -> None:
        """Relay target: show a status update on the job's message, if it has one yet."""
        job = self.queue.get(job_id)
        if job is not None and job.request_message_id is not None:
            with self.metrics.counting_edit():
                await self._require_reporter().show_status(job, update)

    def _require_reporter(self) -> JobReporter:
        """Return the reporter, which must be attached before work starts."""
        if self._reporter is None:
            raise RuntimeError("no reporter attached to the scheduler")
        return self._reporter
