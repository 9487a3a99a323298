"""Per-guild queues, fair dispatch, and the life of each job from queue to posted result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import tempfile
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from bot import media
from bot.crashpoints import crash_point
from bot.eta import (
    SAMPLES_PER_KEY,
    Timing,
    TimingHistory,
    instant,
    observed,
    queue_finishes,
    running_finish,
    steady,
)
from bot.jobs import GenerationRequest, Job, JobStatus
from bot.polling import TailHistory, poll_delay, safety_delay
from bot.predictions import (
    CreateOutcomeUnknown,
    DownloadError,
    Prediction,
    PredictionAPIError,
    PredictionClient,
    PredictionNotFound,
    RateLimited,
    SearchIncomplete,
    ServiceUnavailable,
)
from bot.progress import Phase, Progress, parse_progress
from bot.relay import StatusRelay
from bot.store import InvalidTransition, JobStore

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class Stage(StrEnum):
    """What a member is told about a job that is not finished."""

    QUEUED = "queued"
    STARTING = "starting"
    SAMPLING = "sampling"
    RENDERING = "rendering"
    UPLOADING = "uploading"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class JobStatusUpdate:
    """A status line for a pending job; equal updates are not sent twice."""

    stage: Stage
    position: int | None = None
    step: int = 0
    total: int = 0
    eta: int | None = None  # expected finish, unix seconds, rounded so it rarely changes


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished animation, downloaded and made to fit, ready to post."""

    file: media.Upload | None  # None: even re-encoded it cannot fit under `upload_limit`
    output_size: int  # bytes of the output as the model made it
    upload_limit: int
    prediction_id: str
    model_version: str | None
    predict_time: float | None
    elapsed: float


class JobReporter(Protocol):
    """How the scheduler speaks to members; the Discord cog implements it."""

    async def show_status(self, job: Job, update: JobStatusUpdate) -> None:
        """Edit the request's message to show where the job stands."""
        ...

    async def deliver(self, job: Job, result: JobResult) -> int:
        """Post the result and return its message id; raise DeliveryFailed if it cannot."""
        ...

    async def guild_upload_limit(self, job: Job) -> int | None:
        """Return the upload limit of the job's server, if known."""
        ...

    async def announce(self, job: Job, update: JobStatusUpdate) -> int | None:
        """Show a status message for a job that has none recorded (a crash); return its id.

        While the job's `interaction_token` is stored and still valid, the interaction's own
        response is edited into the status message (no second message beside it); otherwise,
        or if that edit fails, a new message is posted. None: neither worked.
        """
        ...

    async def find_delivered(self, job: Job) -> int | None:
        """Return the id of a result already posted for this job (before a crash), if any."""
        ...

    async def report_done(self, job: Job) -> None:
        """Show on the request's message that its result was posted."""
        ...

    async def report_failure(self, job: Job, reason: str) -> None:
        """Tell the requester the job failed and why."""
        ...

    async def report_canceled(self, job: Job) -> None:
        """Show that the job was canceled."""
        ...


class _OutputExpired(Exception):
    """The prediction's output was removed upstream before it was posted."""


class DeliveryFailed(Exception):
    """The result could not be posted; the message says why, for the requester."""


class QueueFull(Exception):
    """The member already has as many requests waiting as the server allows."""


class CancelOutcome(StrEnum):
    """What a cancel request achieved."""

    CANCELED = "canceled"  # it was still queued and is gone
    CANCELING = "canceling"  # it is running; the API was asked to stop it
    TOO_LATE = "too_late"  # it had already finished


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """How much work may run at once and how much a member may queue."""

    running_per_guild: int = 1
    running_total: int = 4
    queued_per_member: int = 3
    prediction_timeout: float = 1800.0
    start_timeout: float = 600.0
    outage_patience: float = 1800.0  # how long a running job waits out an outage
    max_download_bytes: int = 100 * 1024 * 1024
    status_interval: float = 5.0  # at most one status edit per job this often


@dataclass(frozen=True, slots=True)
class GuildLimits:
    """One server's own limits, which replace the global per-server ones."""

    running: int
    queued_per_member: int


class GuildPolicy(Protocol):
    """Each server's limits and admission rules (its owner's settings, bans, quotas)."""

    def limits(self, guild_id: int) -> GuildLimits:
        """Return the server's limits; called often, so it must not do I/O."""
        ...

    async def admit(self, guild_id: int, requester_id: int) -> None:
        """Raise QueueFull, with a sentence for the member, if the request may not be queued."""
        ...


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One line of a guild's queue as shown to members."""

    job: Job
    position: int | None  # None while running
    status: JobStatusUpdate  # what its status message says (or would)


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of a key for the duration of the block."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


MAX_RERUNS = 2  # an expired output is made again at most this often
# Queued jobs re-estimated per turn of the event loop when many servers' queues go stale at
# once (a measured run, an outage): 10,000 in one go would stall the loop for a second.
REFRESH_CHUNK = 256

_BAD_CREDENTIALS = (
    "The bot's prediction API token was refused; the server owner needs to fix the bot's "
    "configuration."
)


class Scheduler:
    """Fair FIFO queues per guild, with global and per-guild limits on running predictions."""

    def __init__(
        self,
        store: JobStore,
        client: PredictionClient,
        *,
        limits: SchedulerLimits | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        work_root: Path | None = None,
        policy: GuildPolicy | None = None,
    ) -> None:
        self._policy = policy
        self._work_root = work_root  # downloads and conversions, one folder per delivery
        self._store = store
        self._client = client
        self._limits = limits or SchedulerLimits()
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._reporter: JobReporter | None = None
        self._queues: dict[int, deque[Job]] = defaultdict(deque)
        self._rotation: deque[int] = deque()
        # job -> guild of every queued job: lookups scan one short queue, not all 10,000 jobs.
        self._queued_in: dict[int, int] = {}
        self._running: dict[int, Job] = {}
        # guild -> its running jobs' ids: estimating one queue must not scan every running job.
        self._running_by_guild: dict[int, set[int]] = defaultdict(set)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancel_wanted_ids: set[int] = set()
        self._wakeups: dict[int, asyncio.Event] = {}
        # Predictions the API pushed (webhooks), newest state per id, and who follows which.
        self._pushed: OrderedDict[str, Prediction] = OrderedDict()
        self._following: dict[str, int] = {}  # prediction id -> job id
        self._unannounced: set[int] = set()
        self._posting: set[int] = set()
        self._same_input = _KeyedLocks()
        self._converting = asyncio.Semaphore(1)
        self._admission = asyncio.Lock()
        self._relay: StatusRelay[int, JobStatusUpdate] = StatusRelay(
            self._send_status, interval=self._limits.status_interval, clock=clock, sleep=sleep
        )
        self._last_status: dict[int, JobStatusUpdate] = {}
        # Guilds whose queues wait for the refresher: True to show what changed, False to only
        # record it as shown (after a start, the messages already say about that).
        self._stale: dict[int, bool] = {}
        self._refreshing: dict[int, bool] = {}  # the pass under way
        self._refreshed_at = float("-inf")
        self._refresher: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()  # timings being stored
        # Loaded from the store once at start, then fed by each success: polls never query.
        self._history = TimingHistory()
        self._tails = TailHistory()  # what follows sampling, learned from each success
        self._expected: dict[int, float | None] = {}  # running job -> raw expected finish
        self._shown_eta: dict[int, int] = {}  # job -> the rounded estimate last shown
        self._api_offsets: dict[int, float] = {}  # running job -> API clock minus ours
        # While the API is down only the jobs already running keep trying; the rest wait.
        self._outage_since: float | None = None
        self._started = False
        self._stopping = False
        self.idle = asyncio.Event()
        self.idle.set()

    def _clear_work_root(self) -> None:
        """Start with an empty folder for downloads: whatever is there, a crash left behind."""
        if self._work_root is None:
            self._work_root = Path(tempfile.mkdtemp(prefix="animate-bot-"))
            return
        shutil.rmtree(self._work_root, ignore_errors=True)
        self._work_root.mkdir(parents=True, exist_ok=True)

    def attach(self, reporter: JobReporter) -> None:
        """Set who tells members about their jobs."""
        self._reporter = reporter

    async def start(self) -> None:
        """Resume every unfinished job recorded in the store, then start dispatching."""
        if self._started:
            return
        self._started = True
        self._clear_work_root()
        self._history = TimingHistory(await self._store.recent_timings(SAMPLES_PER_KEY))
        jobs = await self._store.unfinished()
        resumed = 0
        for job in jobs:
            if job.status is JobStatus.QUEUED:
                self._enqueue(job)
            else:
                # It already holds a slot upstream: follow it, even past the limits.
                self._launch(job)
                resumed += 1
        if jobs:
            log.info("resumed %d running and %d queued jobs", resumed, len(jobs) - resumed)
        # Their messages already show about this: note it, so that only changes are edited,
        # rather than edit 10,000 messages at once. The refresher spreads out the work; the
        # queues that move now are shown at once (and so are not merely noted later).
        self._mark_stale(show=False)
        self._dispatch()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop work; every job stays recorded where it stood and resumes on the next start."""
        self._stopping = True
        deadline = self._clock() + grace
        # Let posts in flight finish, so a result is not posted again after the restart.
        while posting := [self._tasks[i] for i in self._posting if i in self._tasks]:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            await asyncio.wait(posting, timeout=remaining)
        tasks = list(self._tasks.values())
        if self._refresher is not None:
            tasks.append(self._refresher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Not cancelled: each is one quick write, and the store closes after this returns.
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self._relay.close()

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
            self._check_admission(guild_id, requester_id)
            if self._policy is not None:
                # Under the admission lock: two quick requests cannot both take the last slot.
                await self._policy.admit(guild_id, requester_id)
            job = await self._store.add_job(
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
            self._unannounced.add(job.id)
            self._enqueue(job)
            position = self.position(job.id) or 0
        return job, position

    def _check_admission(self, guild_id: int, requester_id: int) -> None:
        """Raise QueueFull if the member may not queue another request in this guild."""
        if self._stopping:
            raise QueueFull("The bot is restarting; please try again in a moment.")
        limit = self.guild_limits(guild_id).queued_per_member
        if self.pending_for(guild_id, requester_id) >= limit:
            plural = "request" if limit == 1 else "requests"
            raise QueueFull(
                f"You already have {limit} {plural} waiting in this server; "
                "wait for one to finish or cancel one first."
            )

    def guild_limits(self, guild_id: int) -> GuildLimits:
        """The server's own limits, or the global ones when there is no policy."""
        if self._policy is not None:
            return self._policy.limits(guild_id)
        return GuildLimits(self._limits.running_per_guild, self._limits.queued_per_member)

    def limits_changed(self, guild_id: int) -> None:
        """A server's limits changed: start what now fits and show new estimates."""
        self._dispatch()
        self._publish_positions(guild_id)

    def pending_for(self, guild_id: int, requester_id: int) -> int:
        """Count a member's queued and running jobs in a guild."""
        queued = sum(
            1 for job in self._queues.get(guild_id, ()) if job.requester_id == requester_id
        )
        running = sum(
            1
            for job_id in self._running_by_guild.get(guild_id, ())
            if self._running[job_id].requester_id == requester_id
        )
        return queued + running

    def position(self, job_id: int) -> int | None:
        """Return a queued job's place in its guild's queue (1 = next), or None."""
        found = self._find_queued(job_id)
        return found[1] + 1 if found else None

    def snapshot(self, guild_id: int) -> list[QueueEntry]:
        """Return a guild's running then waiting jobs, with what each one's message says."""
        running = [
            QueueEntry(job, None, self._running_status(job))
            for job in self._running.values()
            if job.guild_id == guild_id
        ]
        queue = self._queues.get(guild_id, ())
        statuses = self._waiting_statuses(guild_id)
        waiting = [
            QueueEntry(job, index + 1, status)
            for index, (job, status) in enumerate(zip(queue, statuses, strict=True))
        ]
        return running + waiting

    def queued_status(self, job_id: int) -> JobStatusUpdate | None:
        """Return what a queued job's message should say now (place and estimate), or None."""
        job = self._current(job_id)
        position = self.position(job_id)
        if job is None or position is None:
            return None
        return self._waiting_statuses(job.guild_id)[position - 1]

    async def attach_message(
        self, job_id: int, message_id: int | None, *, shown: JobStatusUpdate | None = None
    ) -> None:
        """Record the message showing a job (`shown` is what it says now) and let the job start."""
        try:
            if message_id is None:
                return
            job = await self._store.set_request_message(job_id, message_id)
            self._refresh(job)
            # Only now may it start: released before the write, another job's end could
            # launch it with no message id, and it would post a second status message.
            self._unannounced.discard(job_id)
            if job.status.is_final:
                # Canceled from its message before we got here: say so on it.
                await self._report_final(job)
                return
            if shown is not None:
                self._relay.prime(job_id, shown)
            if self.position(job_id) is not None:
                self._publish_positions(job.guild_id)
        finally:
            self._unannounced.discard(job_id)
            self._dispatch()

    async def cancel(self, job_id: int) -> CancelOutcome:
        """Remove a queued job, or ask the API to stop a running one."""
        queue_job = self._remove_queued(job_id)
        if queue_job is not None:
            self._unannounced.discard(job_id)
            self._forget(job_id)
            await self._cancel_job(job_id, "Canceled before it started.")
            self._publish_positions(queue_job.guild_id)
            self._update_idle()
            return CancelOutcome.CANCELED
        running = self._running.get(job_id)
        if running is None or not running.status.is_pending:
            return CancelOutcome.TOO_LATE
        # The job's own task sends the cancel upstream, so it is sent once and retried there.
        if job_id not in self._cancel_wanted_ids:
            self._cancel_wanted_ids.add(job_id)
            self._wakeup(job_id).set()
        return CancelOutcome.CANCELING

    async def cancel_queued_for(self, guild_id: int, requester_id: int, reason: str) -> int:
        """Cancel a member's queued jobs in a guild, recording `reason`; return how many.

        Jobs already running are left to finish. Store whatever stops the member queueing
        more (a ban) before calling this: a request being admitted meanwhile is then queued
        first, under the admission lock, and canceled here with the rest.
        """
        async with self._admission:
            queue = self._queues.get(guild_id, ())
            canceled = [job.id for job in queue if job.requester_id == requester_id]
            for job_id in canceled:
                self._remove_queued(job_id)
                self._unannounced.discard(job_id)
                self._forget(job_id)
        if not canceled:
            return 0
        # Everyone behind them moves up at once; then each canceled message is edited.
        self._publish_positions(guild_id)
        await asyncio.gather(*(self._cancel_job(job_id, reason) for job_id in canceled))
        self._update_idle()
        return len(canceled)

    def push(self, prediction: Prediction) -> None:
        """Take a prediction the API pushed (a webhook) and wake the job following it."""
        held = self._pushed.get(prediction.id)
        if held is not None and not _fresher(prediction, held):
            return  # deliveries can arrive out of order, or twice
        self._pushed[prediction.id] = prediction
        self._pushed.move_to_end(prediction.id)
        # Pushes for predictions no job follows (yet) are kept a while, then dropped.
        while len(self._pushed) > PUSHES_KEPT:
            self._pushed.popitem(last=False)
        job_id = self._following.get(prediction.id)
        if job_id is not None:
            self._wakeup(job_id).set()

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running."""
        await self.idle.wait()

    # Queue bookkeeping ----------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        """Append a job to its guild's queue and put the guild in the rotation."""
        self._queues[job.guild_id].append(job)
        self._queued_in[job.id] = job.guild_id
        if job.guild_id not in self._rotation:
            self._rotation.append(job.guild_id)
        self.idle.clear()

    def _find_queued(self, job_id: int) -> tuple[deque[Job], int] | None:
        """Locate a queued job: its guild's queue and its index there."""
        guild_id = self._queued_in.get(job_id)
        queue = self._queues.get(guild_id) if guild_id is not None else None
        if queue is None:
            return None
        for index, job in enumerate(queue):
            if job.id == job_id:
                return queue, index
        return None

    def _remove_queued(self, job_id: int) -> Job | None:
        """Take a job out of whichever queue holds it."""
        found = self._find_queued(job_id)
        if found is None:
            return None
        queue, index = found
        job = queue[index]
        del queue[index]
        self._queued_in.pop(job_id, None)
        if not queue and job.guild_id in self._rotation:
            self._rotation.remove(job.guild_id)
        return job

    def _dispatch(self) -> None:
        """Start queued jobs, round-robin across guilds, while the limits allow."""
        if self._stopping:
            return
        started: set[int] = set()
        while len(self._running) < self._limits.running_total:
            job = self._next_job()
            if job is None:
                break
            started.add(job.guild_id)
            self._launch(job)
        for guild_id in started:
            self._publish_positions(guild_id)
        self._update_idle()

    def _next_job(self) -> Job | None:
        """Pop the next job from the first guild in the rotation that has room."""
        for _ in range(len(self._rotation)):
            guild_id = self._rotation[0]
            self._rotation.rotate(-1)
            queue = self._queues[guild_id]
            if (
                not self._in_outage()
                and queue
                and queue[0].id not in self._unannounced
                and len(self._running_by_guild[guild_id]) < self.guild_limits(guild_id).running
            ):
                job = queue.popleft()
                self._queued_in.pop(job.id, None)
                if not queue:
                    self._rotation.remove(guild_id)
                return job
        return None

    def _launch(self, job: Job) -> None:
        """Start the task that carries a job to its end."""
        self._running[job.id] = job
        self._running_by_guild[job.guild_id].add(job.id)
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self.idle.clear()

    def _finish(self, job_id: int) -> None:
        """Release a job's slot and let the next one start."""
        job = self._running.pop(job_id, None)
        self._tasks.pop(job_id, None)
        if job is not None:
            self._unfollow(job)
        self._cancel_wanted_ids.discard(job_id)
        self._wakeups.pop(job_id, None)
        self._forget(job_id)
        if job is not None:
            self._running_by_guild[job.guild_id].discard(job_id)
        if not self._running and self._outage_since is not None:
            # The job that was probing the outage is gone: let the next one probe.
            self._leave_outage()
        self._dispatch()

    def _update_idle(self) -> None:
        """Set the idle event when nothing is queued or running."""
        if not self._running and not any(self._queues.values()):
            self.idle.set()

    def _refresh(self, job: Job) -> None:
        """Keep the in-memory copy of a job in step with the store."""
        if job.id in self._running:
            self._running[job.id] = job
        elif found := self._find_queued(job.id):
            queue, index = found
            queue[index] = job

    def _forget(self, job_id: int) -> None:
        """Drop what was shown for a job that left the queues."""
        self._last_status.pop(job_id, None)
        self._expected.pop(job_id, None)
        self._shown_eta.pop(job_id, None)
        self._api_offsets.pop(job_id, None)

    def _publish(self, job_id: int, update: JobStatusUpdate) -> None:
        """Show a job's status (the relay drops repeats) and remember it for the queue view."""
        self._last_status[job_id] = update
        self._relay.publish(job_id, update)

    def _publish_positions(self, guild_id: int, *, show: bool = True) -> None:
        """Show every waiting job in a guild its current place and estimate (and any outage).

        With `show` false, only record them as shown: the messages already say about that.
        """
        # This covers whatever made the guild stale, so the refresher need not come back to it.
        stale = self._stale.pop(guild_id, False)
        show = self._refreshing.pop(guild_id, False) or stale or show
        queue = list(self._queues.get(guild_id, ()))
        for job, status in zip(queue, self._waiting_statuses(guild_id), strict=True):
            if show:
                self._publish(job.id, status)
            else:
                self._last_status[job.id] = status
                self._relay.prime(job.id, status)

    def _mark_stale(self, *, show: bool = True) -> None:
        """Have the refresher re-estimate every guild's queue soon; repeats coalesce."""
        for guild_id, queue in self._queues.items():
            if queue:
                self._stale[guild_id] = show or self._stale.get(guild_id, False)
        if self._stale and not self._stopping and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_stale(), name="queue-refresher")

    async def _refresh_stale(self) -> None:
        """Re-estimate stale guilds a chunk at a time, yielding to the loop between chunks.

        A pass starts at most once per status interval: estimates that change on every
        measured run (several a second) cannot be edited into messages faster than that anyway.
        """
        try:
            while self._stale:
                wait = self._refreshed_at + self._limits.status_interval - self._clock()
                if wait > 0:
                    await self._sleep(wait)
                self._refreshing, self._stale = self._stale, {}
                done = 0
                for guild_id in list(self._refreshing):
                    if guild_id not in self._refreshing:
                        continue  # shown meanwhile, as its queue moved
                    # Takes it out of `_refreshing` and `_stale`; shows it if either says so.
                    self._publish_positions(guild_id, show=False)
                    done += len(self._queues.get(guild_id, ())) + 1
                    if done >= REFRESH_CHUNK:
                        done = 0
                        await asyncio.sleep(0)
                self._refreshed_at = self._clock()
        finally:
            self._refreshing = {}
            self._refresher = None

    def _waiting_statuses(self, guild_id: int) -> list[JobStatusUpdate]:
        """The status of each queued job of a guild, in queue order."""
        queue = self._queues.get(guild_id, ())
        if self._outage_since is not None:
            return [
                JobStatusUpdate(Stage.UNAVAILABLE, position=index + 1)
                for index in range(len(queue))
            ]
        now = self._wall()
        running_left = [
            self._running_left(self._running[job_id], now)
            for job_id in self._running_by_guild.get(guild_id, ())
        ]
        finishes = queue_finishes(
            running_left,
            [self._history.estimate(job.request.model, job.request.steps) for job in queue],
            self.guild_limits(guild_id).running,
        )
        return [
            JobStatusUpdate(
                Stage.QUEUED,
                position=index + 1,
                eta=self._steady_eta(job.id, None if finish is None else now + finish, now),
            )
            for index, (job, finish) in enumerate(zip(queue, finishes, strict=True))
        ]

    def _running_left(self, job: Job, now: float) -> float | None:
        """Seconds until a running job should finish, or None if there is no telling."""
        if job.status is JobStatus.DELIVERING:
            return 0.0
        if job.id in self._expected:
            expected = self._expected[job.id]
        else:  # launched, but its task has not said anything yet
            expected = running_finish(
                self._history.estimate(job.request.model, job.request.steps),
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

    def _show_running(
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
            self._history.estimate(job.request.model, job.request.steps),
            now=now,
            submitted_at=job.submitted_at or now,
            started_at=started_at,
            seconds_left=seconds_left,
        )
        self._expected[job.id] = expected
        before = self._shown_eta.get(job.id)
        eta = self._steady_eta(job.id, expected, now)
        self._publish(job.id, JobStatusUpdate(stage, step=step, total=total, eta=eta))
        if eta != before:
            self._publish_positions(job.guild_id)

    async def _learn(self, job: Job, prediction: Prediction) -> None:
        """Remember how long a succeeded prediction waited and ran, for later estimates."""
        self._expected.pop(job.id, None)
        self._tails.learn(job.request.model, job.request.steps, prediction)
        timing = observed(
            job.request.model,
            job.request.steps,
            created_at=prediction.created_at,
            started_at=prediction.started_at,
            completed_at=prediction.completed_at,
            predict_time=prediction.predict_time,
        )
        if timing is None:
            return
        if self._history.add(timing):
            self._mark_stale()
        # Stored beside the post rather than before it: the history in memory already has it,
        # and a write queued behind other jobs' must not hold up this job's delivery.
        write = asyncio.create_task(self._record_timing(job.id, timing), name=f"timing-{job.id}")
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _record_timing(self, job_id: int, timing: Timing) -> None:
        """Store a measured run for the estimates after a restart."""
        try:
            await self._store.record_timing(timing)
        except sqlite3.Error:
            # Only estimates suffer; the job itself is fine.
            log.warning("job %s: could not record its timing", job_id, exc_info=True)

    def _poll_delay(
        self, job: Job, prediction: Prediction, progress: Progress, polls: int
    ) -> float:
        """Seconds until the next poll: aimed just past the end the logs and history foretell.

        When the API pushes the end (webhooks), a poll is only the safety net for a lost push.
        """
        delay = poll_delay(
            prediction,
            progress,
            steps=job.request.steps,
            now=self._wall() + self._api_clock_offset(job, prediction),
            estimate=self._history.estimate(job.request.model, job.request.steps),
            tail=self._tails.tail(job.request.model),
            polls=polls,
        )
        return safety_delay(delay) if self._client.pushes_results else delay

    def _api_clock_offset(self, job: Job, prediction: Prediction) -> float:
        """How far the API's clock runs ahead of ours, read from the creates (0 if unknown)."""
        created = instant(prediction.created_at)
        if created is not None and job.submitted_at is not None:
            # Polls are timed from the API's timestamps; a skewed host clock must not shift them.
            self._api_offsets[job.id] = max(-300.0, min(300.0, created - job.submitted_at))
        # Each reading also holds the time from recording the submit to the API receiving the
        # create (a busy database, a connection to open): a quarter second of that would aim
        # every poll too early. The smallest reading across the running jobs has the least.
        return min(self._api_offsets.values(), default=0.0)

    def _in_outage(self) -> bool:
        """True while the API is down and a running job is already probing it."""
        return self._outage_since is not None and bool(self._running)

    def _enter_outage(self) -> None:
        """Hold the queues: nothing new starts until the API answers again."""
        if self._outage_since is None:
            log.warning("the prediction API is unavailable; holding the queues")
            self._outage_since = self._clock()
            self._mark_stale()

    def _leave_outage(self) -> None:
        """The API answered: start queued work again."""
        if self._outage_since is not None:
            log.info("the prediction API is back after %.0f s", self._clock() - self._outage_since)
            self._outage_since = None
            self._mark_stale()
            self._dispatch()

    # The life of one job --------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        """Carry a job from wherever it stands to done, failed or canceled."""
        try:
            await self._advance(job)
        except asyncio.CancelledError:
            # Shutdown: the job stays recorded in its current state and resumes on start.
            raise
        except Exception:
            log.exception("job %s crashed", job.id)
            await self._fail(job.id, "Something went wrong on the bot's side; please try again.")
        finally:
            if not self._stopping:
                self._finish(job.id)

    async def _advance(self, job: Job) -> None:
        """Step through the states, storing each before acting on it."""
        if job.request_message_id is None:
            job = await self._announce(job)
        prediction: Prediction | None = None
        resumed_delivery = job.status is JobStatus.DELIVERING
        # Submitted before a restart: the create may have reached the API.
        maybe_created = job.status is JobStatus.SUBMITTED
        while True:
            if job.status in (JobStatus.QUEUED, JobStatus.SUBMITTED):
                # Two jobs with the same input and seed cannot be told apart in the API's
                # list, so their creates never overlap: each finds only its own prediction.
                async with self._same_input.hold(job.request.to_json()):
                    if job.status is JobStatus.QUEUED:
                        job = self._track(await self._store.mark_submitted(job.id))
                        self._show_running(job, Stage.STARTING)
                        crash_point("submitted")
                    prediction = await self._create(job, maybe_created=maybe_created)
                    if prediction is None:
                        return  # failed or canceled
                    crash_point("created")
                    job = self._track(await self._store.mark_running(job.id, prediction.id))
                    crash_point("running")
            if job.status is JobStatus.RUNNING:
                prediction = await self._follow(job, prediction)
                if prediction is None:
                    return
                crash_point("succeeded")
                job = self._track(
                    await self._store.mark_delivering(
                        job.id,
                        predict_time=prediction.predict_time,
                        model_version=prediction.version,
                    )
                )
                await self._learn(job, prediction)
                crash_point("delivering")
            if job.status is not JobStatus.DELIVERING:
                return
            try:
                await self._deliver(job, prediction, resumed=resumed_delivery)
                return
            except _OutputExpired:
                rerun = await self._rerun(job)
                if rerun is None:
                    return
                job = rerun
                prediction, resumed_delivery, maybe_created = None, False, False

    async def _rerun(self, job: Job) -> Job | None:
        """Make an expired output again: same input and seed give the same animation."""
        if job.reruns >= MAX_RERUNS:
            await self._fail(
                job.id,
                "The animation expired at the animation service before the bot could post it.",
            )
            return None
        log.info("job %s: output of %s expired; running it again", job.id, job.prediction_id)
        self._unfollow(job)
        job = self._track(await self._store.mark_rerun(job.id))
        self._show_running(job, Stage.STARTING)
        return job

    async def _announce(self, job: Job) -> Job:
        """Give a job whose status message never got recorded (a crash, a failed edit) one.

        The reporter edits the interaction's response while the stored token allows it, so a
        crash between the acknowledgement and storing the message id leaves one message.
        """
        stage = Stage.UPLOADING if job.status is JobStatus.DELIVERING else Stage.STARTING
        update = JobStatusUpdate(stage)
        try:
            message_id = await self._require_reporter().announce(job, update)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("job %s: could not announce itself", job.id, exc_info=True)
            return job
        if message_id is None:
            return job
        job = self._track(await self._store.set_request_message(job.id, message_id))
        self._relay.prime(job.id, update)
        return job

    def _track(self, job: Job) -> Job:
        """Remember the latest stored state of a running job."""
        self._running[job.id] = job
        return job

    async def _create(self, job: Job, *, maybe_created: bool) -> Prediction | None:
        """Create the prediction exactly once, waiting out outages instead of failing."""
        deadline = self._clock() + self._limits.outage_patience
        attempt = 0
        api_input = job.request.to_api_input()
        while True:
            wait_at_least = 0.0
            if self._cancel_wanted(job.id):
                self._wakeup(job.id).clear()
                found = await self._find_quietly(job, api_input) if maybe_created else None
                if found is not None:
                    return found  # following it sends the cancel upstream
                await self._cancel_job(job.id, "Canceled before it started.")
                return None
            try:
                if maybe_created:
                    # The create may have reached the API: find it rather than pay twice.
                    found = await self._find(job, api_input)
                    if found is not None:
                        log.info("job %s: found prediction %s from before", job.id, found.id)
                        return found
                    maybe_created = False
                created = await self._create_cancellable(job, api_input)
                self._leave_outage()
                return created
            except SearchIncomplete:
                await self._fail(
                    job.id,
                    "The bot could not confirm whether the animation service had started this "
                    "request, so it did not send it again; please try again.",
                )
                return None
            except CreateOutcomeUnknown as exc:
                log.warning("job %s: create outcome unknown: %s", job.id, exc.detail)
                self._enter_outage()
                maybe_created = True
            except (ServiceUnavailable, RateLimited) as exc:
                log.warning("job %s: prediction API unavailable: %s", job.id, exc.detail)
                self._enter_outage()
                wait_at_least = exc.retry_after or 0.0
            except PredictionAPIError as exc:
                await self._fail(job.id, _api_refusal(exc))
                return None
            if self._clock() >= deadline:
                await self._fail(
                    job.id,
                    "The animation service has been unavailable for too long; "
                    "please try again later.",
                )
                return None
            self._publish(job.id, JobStatusUpdate(Stage.UNAVAILABLE))
            attempt += 1
            await self._pause(max(wait_at_least, min(60.0, 2.0 * 2 ** min(attempt, 5))), job.id)

    async def _create_cancellable(self, job: Job, api_input: dict[str, object]) -> Prediction:
        """Send the create; if Cancel is pressed while it is held open, cancel it upstream."""
        create = asyncio.ensure_future(self._client.create(api_input))
        wake = asyncio.ensure_future(self._wakeup(job.id).wait())
        try:
            await asyncio.wait({create, wake}, return_when=asyncio.FIRST_COMPLETED)
            if not create.done() and self._cancel_wanted(job.id):
                # The create holds for up to a minute; find the prediction to stop it now.
                # (Its following cancels it again if this finds nothing yet.)
                found = await self._find_quietly(job, api_input)
                if found is not None:
                    await self._try_cancel(found.id)
            return await create
        finally:
            wake.cancel()
            create.cancel()

    async def _find(self, job: Job, api_input: dict[str, object]) -> Prediction | None:
        """Look up this job's prediction, unclaimed by others, in the API's list."""
        found = await self._client.find(
            api_input, created_after=job.submitted_at or job.created_at, accept=self._unclaimed
        )
        if found is not None:
            self._leave_outage()  # the create had gone through after all
        return found

    async def _find_quietly(self, job: Job, api_input: dict[str, object]) -> Prediction | None:
        """Like `_find`, but an error just means "not found"."""
        try:
            return await self._find(job, api_input)
        except PredictionAPIError as exc:
            log.warning("job %s: could not look up its prediction: %s", job.id, exc.detail)
            return None

    async def _follow(self, job: Job, prediction: Prediction | None) -> Prediction | None:
        """Poll until the prediction ends; return it if it succeeded, else settle the job."""
        assert job.prediction_id is not None
        # Wall clock from the stored start, so the deadline holds across restarts.
        started = job.started_at if job.started_at is not None else self._wall()
        polls = 0
        cancel_sent = False
        self._following[job.prediction_id] = job.id
        while prediction is None or not prediction.is_terminal:
            if self._cancel_wanted(job.id):
                self._wakeup(job.id).clear()
                if not cancel_sent:
                    cancel_sent = await self._try_cancel(job.prediction_id)
            if prediction is not None:
                progress = parse_progress(prediction.logs, job.request.steps)
                self._show_progress(job, prediction, progress)
                waited = self._wall() - started
                # `prediction` is always a fresh answer here: an outage waits inside the fetch.
                if prediction.status == "starting" and waited > self._limits.start_timeout:
                    # Stuck upstream (no capacity, a broken boot): free the member's slot.
                    stopped = await self._try_cancel(job.prediction_id)
                    minutes = self._limits.start_timeout / 60
                    await self._fail(
                        job.id,
                        f"The animation service did not start this request within {minutes:g} "
                        f"minutes, so {'it was canceled' if stopped else 'the bot gave up on it'}"
                        "; please try again later.",
                    )
                    return None
                if waited > self._limits.prediction_timeout:
                    stopped = await self._try_cancel(job.prediction_id)
                    minutes = self._limits.prediction_timeout / 60
                    await self._fail(
                        job.id,
                        f"The animation took longer than {minutes:g} minutes, so "
                        f"{'it was stopped' if stopped else 'the bot gave up on it'}.",
                    )
                    return None
                woken = await self._pause(
                    self._poll_delay(job, prediction, progress, polls), job.id
                )
                pushed = self._take_pushed(job, prediction)
                if pushed is not None:
                    prediction = pushed
                    continue
                if woken and not self._cancel_wanted(job.id):
                    continue  # a push older than what we know: nothing new
            else:
                prediction = self._take_pushed(job, None)
                if prediction is not None:
                    continue
            prediction = await self._fetch(job)
            if prediction is None:
                return None
            polls += 1
        # A prediction that ends any other way than success is still billed for its GPU time.
        billed = prediction.predict_time
        if self._cancel_wanted(job.id):
            # Whatever the outcome, the member was told it is being stopped: keep that promise.
            await self._cancel_job(job.id, "Canceled.", predict_time=billed)
            return None
        if prediction.status == "succeeded":
            return prediction
        if prediction.status in ("canceled", "aborted"):
            await self._fail(
                job.id, "The animation service stopped this request.", predict_time=billed
            )
            return None
        reason = (prediction.error or "").strip() or "The animation service reported a failure."
        await self._fail(job.id, f"The animation failed: {reason}", predict_time=billed)
        return None

    async def _fetch(self, job: Job) -> Prediction | None:
        """Read the job's prediction, waiting out an outage; None once the job has failed."""
        assert job.prediction_id is not None
        outage_since: float | None = None
        while True:
            try:
                prediction = await self._client.get(job.prediction_id)
            except PredictionNotFound:
                await self._fail(job.id, "The animation service has no record of this request.")
                return None
            except (ServiceUnavailable, RateLimited) as exc:
                # The prediction is paid for and may still run or hold its output: keep at it.
                now = self._clock()
                outage_since = outage_since if outage_since is not None else now
                log.warning("job %s: reading its prediction failed: %s", job.id, exc.detail)
                self._enter_outage()
                if now - outage_since > self._limits.outage_patience:
                    await self._fail(
                        job.id, "Lost contact with the animation service; please try again."
                    )
                    return None
                self._publish(job.id, JobStatusUpdate(Stage.UNAVAILABLE))
                # A Cancel press is served once the API answers; it must not end this wait.
                self._wakeup(job.id).clear()
                await self._pause(max(10.0, exc.retry_after or 0.0), job.id)
                continue
            except PredictionAPIError as exc:
                await self._fail(job.id, _api_refusal(exc))
                return None
            self._leave_outage()
            return prediction

    async def _deliver(self, job: Job, prediction: Prediction | None, *, resumed: bool) -> None:
        """Download the output, make it fit, and post it, exactly once."""
        assert job.prediction_id is not None
        reporter = self._require_reporter()
        if resumed:
            # The last run may have died between posting and recording the post.
            existing = await reporter.find_delivered(job)
            if existing is not None:
                log.info("job %s was already posted as message %s", job.id, existing)
                done = await self._store.mark_done(job.id, result_message_id=existing)
                await self._report(done, lambda reporter: reporter.report_done(done))
                return
        self._relay.publish(job.id, JobStatusUpdate(Stage.UPLOADING))
        workdir = Path(tempfile.mkdtemp(prefix=f"job{job.id}-", dir=self._work_root))
        try:
            result = await self._prepare(job, prediction, workdir)
            if result is None:
                return  # failed, and the requester was told why
            await self._relay.settle(job.id)
            if self._stopping:
                return  # stays `delivering`; the next start posts it
            self._posting.add(job.id)
            try:
                message_id = await reporter.deliver(job, result)
                crash_point("posted")
                await self._store.mark_done(job.id, result_message_id=message_id)
            except DeliveryFailed as exc:
                await self._fail(job.id, str(exc))
                return
            finally:
                self._posting.discard(job.id)
        finally:
            # Blocking, but small and local; it must run even when the task is cancelled.
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("job %s delivered as message %s", job.id, message_id)

    async def _prepare(
        self, job: Job, prediction: Prediction | None, workdir: Path
    ) -> JobResult | None:
        """Fetch the output into `workdir` and convert it to fit; None once the job failed."""
        assert job.prediction_id is not None
        try:
            if prediction is None or not prediction.output_urls:
                prediction = await self._fetch(job)
                if prediction is None:
                    return None
            if prediction.data_removed:
                # Outputs live an hour upstream; the bot was away longer than that.
                raise _OutputExpired
            urls = prediction.output_urls
            if not urls:
                await self._fail(job.id, "The animation service returned no file.")
                return None
            downloaded = workdir / "output"
            size = await self._client.download_to(
                urls[0], downloaded, max_bytes=self._limits.max_download_bytes
            )
            crash_point("downloaded")
            guild_limit = None
            if job.upload_limit is None:
                guild_limit = await self._require_reporter().guild_upload_limit(job)
            limit = media.upload_limit(job.upload_limit, guild_limit)
            upload = await media.prepare_upload(
                downloaded,
                fmt=job.request.output_format,  # pyright: ignore[reportArgumentType]
                limit_bytes=limit,
                workdir=workdir,
                seed=job.seed,
                prompt=job.request.prompt,
                # FFmpeg uses every core: one conversion at a time keeps the bot responsive.
                conversions=self._converting,
            )
        except DownloadError as exc:
            await self._fail(job.id, f"The animation could not be downloaded: {exc}")
            return None
        except media.MediaError as exc:
            await self._fail(job.id, str(exc))
            return None
        except PredictionAPIError as exc:
            await self._fail(job.id, _api_refusal(exc))
            return None
        return JobResult(
            file=upload,
            output_size=size,
            upload_limit=limit,
            prediction_id=job.prediction_id,
            model_version=prediction.version or job.model_version,
            predict_time=prediction.predict_time or job.predict_time,
            elapsed=max(0.0, self._wall() - job.created_at),
        )

    # Helpers --------------------------------------------------------------------------

    def _cancel_wanted(self, job_id: int) -> bool:
        """True if someone pressed Cancel on this job."""
        return job_id in self._cancel_wanted_ids

    def _wakeup(self, job_id: int) -> asyncio.Event:
        """The event that cuts a job's pause short."""
        return self._wakeups.setdefault(job_id, asyncio.Event())

    async def _unclaimed(self, prediction: Prediction) -> bool:
        """True if no job owns this prediction yet (identical requests can exist).

        An expired one is never ours to resume: a rerun needs a new prediction.
        """
        if prediction.data_removed:
            return False
        return await self._store.job_for_prediction(prediction.id) is None

    async def _try_cancel(self, prediction_id: str) -> bool:
        """Ask the API to cancel; return whether it accepted."""
        try:
            await self._client.cancel(prediction_id)
        except PredictionAPIError as exc:
            log.warning("cancel of %s failed: %s", prediction_id, exc.detail)
            return False
        return True

    async def _pause(self, seconds: float, job_id: int) -> bool:
        """Sleep, waking early if the job is canceled or pushed; return whether it woke early."""
        event = self._wakeup(job_id)
        if event.is_set():
            return True
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        return event.is_set()

    def _unfollow(self, job: Job) -> None:
        """Forget the job's prediction for pushes: it ended, or an expired one is made again."""
        if job.prediction_id is not None:
            self._following.pop(job.prediction_id, None)
            self._pushed.pop(job.prediction_id, None)

    def _take_pushed(self, job: Job, known: Prediction | None) -> Prediction | None:
        """Return the pushed state of the job's prediction if it is newer than `known`."""
        assert job.prediction_id is not None
        if not self._cancel_wanted(job.id):
            self._wakeup(job.id).clear()  # a Cancel press keeps its wake-up for the loop
        pushed = self._pushed.get(job.prediction_id)
        if pushed is None or (known is not None and not _fresher(pushed, known)):
            return None
        return pushed

    def _show_progress(self, job: Job, prediction: Prediction, progress: Progress) -> None:
        """Turn the progress read from the logs into a status update."""
        if prediction.status == "starting":
            self._show_running(job, Stage.STARTING)
            return
        stage = {
            Phase.WAITING: Stage.STARTING,
            Phase.SAMPLING: Stage.SAMPLING,
            Phase.RENDERING: Stage.RENDERING,
        }[progress.phase]
        seconds_left = progress.seconds_left if progress.phase is not Phase.WAITING else None
        if progress.phase is Phase.RENDERING and seconds_left is None:
            seconds_left = 0.0  # the last few frames
        self._show_running(
            job,
            stage,
            step=progress.step,
            total=progress.total,
            started_at=instant(prediction.started_at),
            seconds_left=seconds_left,
        )

    async def _fail(self, job_id: int, reason: str, *, predict_time: float | None = None) -> None:
        """Record a failure (and any GPU time it was billed) and tell the requester."""
        try:
            job = await self._store.mark_failed(job_id, reason, predict_time=predict_time)
        except InvalidTransition:
            return
        log.info("job %s failed: %s", job_id, reason)
        await self._report(job, lambda reporter: reporter.report_failure(job, reason))

    async def _cancel_job(
        self, job_id: int, reason: str, *, predict_time: float | None = None
    ) -> None:
        """Record a cancellation (and any GPU time it was billed) and show it."""
        try:
            job = await self._store.mark_canceled(job_id, reason, predict_time=predict_time)
        except InvalidTransition:
            return
        await self._report(job, lambda reporter: reporter.report_canceled(job))

    async def _report(self, job: Job, call: Callable[[JobReporter], Awaitable[None]]) -> None:
        """Send a final word on a job after any pending status edit; never raise into the job."""
        await self._relay.settle(job.id)
        try:
            await call(self._require_reporter())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("could not report on job %s", job.id, exc_info=True)

    async def _report_final(self, job: Job) -> None:
        """Show a finished job's outcome on its message."""
        if job.status is JobStatus.CANCELED:
            await self._report(job, lambda reporter: reporter.report_canceled(job))
        elif job.status is JobStatus.FAILED:
            reason = job.error or "The request failed."
            await self._report(job, lambda reporter: reporter.report_failure(job, reason))

    async def _send_status(self, job_id: int, update: JobStatusUpdate) -> None:
        """Relay target: show a status update on the job's message, if it has one yet."""
        job = self._current(job_id)
        if job is not None and job.request_message_id is not None:
            await self._require_reporter().show_status(job, update)

    def _current(self, job_id: int) -> Job | None:
        """The newest in-memory copy of a running or queued job."""
        if job_id in self._running:
            return self._running[job_id]
        found = self._find_queued(job_id)
        return found[0][found[1]] if found else None

    def _require_reporter(self) -> JobReporter:
        """Return the reporter, which must be attached before work starts."""
        if self._reporter is None:
            raise RuntimeError("no reporter attached to the scheduler")
        return self._reporter


PUSHES_KEPT = 2000  # pushed predictions remembered, for jobs that were not following yet

_STATUS_ORDER = {"starting": 0, "processing": 1}


def _fresher(candidate: Prediction, known: Prediction) -> bool:
    """True if `candidate` is a later state of the same prediction than `known`."""
    if known.is_terminal:
        return False
    if candidate.is_terminal:
        return True
    rank, known_rank = _STATUS_ORDER.get(candidate.status, 0), _STATUS_ORDER.get(known.status, 0)
    if rank != known_rank:
        return rank > known_rank
    return len(candidate.logs) > len(known.logs)


def _api_refusal(exc: PredictionAPIError) -> str:
    """Word an API refusal for the requester."""
    if exc.status in (401, 403):
        return _BAD_CREDENTIALS
    return f"The animation service refused the request: {exc.detail}"
