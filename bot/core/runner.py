"""The job runner: the life of one job, from its claim to done, failed or canceled.

`advance` reads as the job's life: create the prediction (or find the one a crash left),
follow it to its end, then download, fit and post the result. Each step is stored before the
next begins, so a restart resumes a job exactly where it stood (see docs/job-states.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from bot.backends.base import (
    AtCapacity,
    Attempt,
    CreateOutcomeUnknown,
    Prediction,
    PredictionAPIError,
    PredictionLost,
    RateLimited,
    SearchIncomplete,
    ServiceUnavailable,
    current_attempt,
)
from bot.core.context import JobContext
from bot.core.crashpoints import crash_point
from bot.core.delivery import OutputExpired, ResultDelivery
from bot.core.eta import Timing, observed
from bot.core.following import PredictionFollower
from bot.core.jobs import Job, JobStatus
from bot.core.outcomes import FailureCause, api_refusal
from bot.core.reporter import JobStatusUpdate, Stage
from bot.observability.logs import bind_prediction
from bot.storage.base import LeaseLost

log = logging.getLogger(__name__)

MAX_RERUNS = 2  # an expired output is made again at most this often
MAX_LOST_RERUNS = 3  # a prediction its server lost is run again at most this often
# Every GPU busy: a freed one wakes the job (capacity_freed); this is the fallback.
CAPACITY_RETRY_SECONDS = 5.0


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


class JobRunner:
    """Carries each claimed job through its steps; talks to a Backend and a Store only."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        follower: PredictionFollower,
        delivery: ResultDelivery,
        track: Callable[[Job], object],
    ) -> None:
        self._backend = ctx.backend
        self._store = ctx.store
        self._signals = ctx.signals
        self._pushes = ctx.pushes
        self._status = ctx.status
        self._outcomes = ctx.outcomes
        self._outage = ctx.outage
        self._planner = ctx.planner
        self._reporter = ctx.reporter
        self._limits = ctx.limits
        self._clock = ctx.clock
        self._wall = ctx.wall_clock
        self._metrics = ctx.metrics
        self._follower = follower
        self._delivery = delivery
        self._track_in_queue = track  # keeps the queue's copy of a running job current
        self._same_input = _KeyedLocks()
        self.writes: set[asyncio.Task[None]] = set()  # timings being stored

    async def run(self, job: Job) -> None:
        """Carry a job from wherever it stands to done, failed or canceled."""
        try:
            await self.advance(job)
        except asyncio.CancelledError:
            # Shutdown: the job stays recorded in its current state and resumes on start.
            raise
        except LeaseLost:
            # Several processes: this one's lease lapsed and another took the job over.
            log.warning("job %s was taken over by another process; stopping here", job.id)
        except Exception:
            log.exception("job %s crashed", job.id)
            await self._outcomes.fail(
                job.id,
                "Something went wrong on the bot's side; please try again.",
                cause=FailureCause.BOT_ERROR,
            )

    async def advance(self, job: Job) -> None:
        """Step through the states, storing each before acting on it."""
        if job.request_message_id is None:
            job = await self._announce(job)
        prediction: Prediction | None = None
        resumed_delivery = job.status is JobStatus.DELIVERING
        # Submitted before a restart: the create may have reached the API.
        maybe_created = job.status is JobStatus.SUBMITTED
        while True:
            # Named after the job and its run, so a backend that takes ids from its client
            # names the prediction so (and a restart finds it again by that name).
            current_attempt.set(Attempt(f"job-{job.id}-r{job.reruns}", job.request.to_api_input()))
            if job.status in (JobStatus.QUEUED, JobStatus.SUBMITTED):
                # Two jobs with the same input and seed cannot be told apart in the API's
                # list, so their creates never overlap: each finds only its own prediction.
                async with self._same_input.hold(job.request.to_json()):
                    if job.status is JobStatus.QUEUED:
                        job = self._track(await self._store.mark_submitted(job.id))
                        self._metrics.waited(self._wall() - job.created_at)
                        self._status.show_running(job, Stage.STARTING)
                        crash_point("submitted")
                    prediction = await self._create(job, maybe_created=maybe_created)
                    if prediction is None:
                        return  # failed or canceled
                    crash_point("created")
                    job = self._track(await self._store.mark_running(job.id, prediction.id))
                    bind_prediction(prediction.id)
                    crash_point("running")
            if job.status is JobStatus.RUNNING:
                try:
                    prediction = await self._follower.follow(job, prediction)
                except PredictionLost as lost:
                    rerun = await self._rerun_lost(job, str(lost))
                    if rerun is None:
                        return
                    job, prediction, maybe_created = rerun, None, False
                    continue
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
                self.learn(job, prediction)
                backend = self._metrics.backend_of(prediction.id)
                if prediction.predict_time is not None:
                    self._metrics.ran(prediction.predict_time, backend)
                self._metrics.billed(prediction.predict_time, backend)
                crash_point("delivering")
            if job.status is not JobStatus.DELIVERING:
                return
            # A delivery only reads what ended: nothing may be started again to read it.
            current_attempt.set(None)
            try:
                await self._delivery.deliver(job, prediction, resumed=resumed_delivery)
                return
            except OutputExpired:
                rerun = await self._rerun(job)
                if rerun is None:
                    return
                job = rerun
                prediction, resumed_delivery, maybe_created = None, False, False

    async def _rerun(self, job: Job) -> Job | None:
        """Make an expired output again: same input and seed give the same animation."""
        if job.reruns >= MAX_RERUNS:
            await self._outcomes.fail(
                job.id,
                "The animation expired at the animation service before the bot could post it.",
                cause=FailureCause.EXPIRED,
            )
            return None
        log.info("job %s: output of %s expired; running it again", job.id, job.prediction_id)
        self._pushes.unfollow(job.prediction_id)
        job = self._track(await self._store.mark_rerun(job.id))
        self._status.show_running(job, Stage.STARTING)
        return job

    async def _rerun_lost(self, job: Job, reason: str) -> Job | None:
        """Run a prediction its server lost again elsewhere: same input, same seed."""
        if self._signals.cancel_wanted(job.id):
            await self._outcomes.cancel(job.id, "Canceled.")
            return None
        if job.reruns >= MAX_LOST_RERUNS:
            await self._outcomes.fail(
                job.id,
                f"The GPU servers kept losing this animation ({reason}); please try again.",
                cause=FailureCause.API_UNAVAILABLE,
            )
            return None
        log.warning("job %s: %s lost (%s); running it again", job.id, job.prediction_id, reason)
        self._pushes.unfollow(job.prediction_id)
        job = self._track(await self._store.mark_rerun(job.id))
        self._status.show_running(job, Stage.STARTING)
        return job

    async def _announce(self, job: Job) -> Job:
        """Give a job whose status message never got recorded (a crash, a failed edit) one.

        The reporter edits the interaction's response while the stored token allows it, so a
        crash between the acknowledgement and storing the message id leaves one message.
        """
        stage = Stage.UPLOADING if job.status is JobStatus.DELIVERING else Stage.STARTING
        return await self.announce(job, JobStatusUpdate(stage))

    async def announce(self, job: Job, update: JobStatusUpdate) -> Job:
        """Show `update` on a new (or the interaction's own) message and store its id."""
        try:
            message_id = await self._reporter().announce(job, update)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("job %s: could not announce itself", job.id, exc_info=True)
            return job
        if message_id is None:
            return job
        job = self._track(await self._store.set_request_message(job.id, message_id))
        self._status.prime(job.id, update)
        return job

    def _track(self, job: Job) -> Job:
        """Remember the latest stored state of a running job."""
        self._track_in_queue(job)
        return job

    async def _create(self, job: Job, *, maybe_created: bool) -> Prediction | None:
        """Create the prediction exactly once, waiting out outages instead of failing."""
        deadline = self._clock() + self._limits.outage_patience
        capacity_deadline = self._clock() + self._limits.start_timeout
        attempt = 0
        api_input = job.request.to_api_input()
        while True:
            wait_at_least = 0.0
            if self._signals.cancel_wanted(job.id):
                self._signals.clear(job.id)
                found = await self._find_quietly(job, api_input) if maybe_created else None
                if found is not None:
                    return found  # following it sends the cancel upstream
                await self._outcomes.cancel(job.id, "Canceled before it started.")
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
                self._outage.leave()
                return created
            except SearchIncomplete:
                await self._outcomes.fail(
                    job.id,
                    "The bot could not confirm whether the animation service had started this "
                    "request, so it did not send it again; please try again.",
                    cause=FailureCause.UNCERTAIN,
                )
                return None
            except AtCapacity:
                # Every GPU is busy (a rerun, or a 409 from one thought free): not an outage.
                if self._clock() >= capacity_deadline:
                    minutes = self._limits.start_timeout / 60
                    await self._outcomes.fail(
                        job.id,
                        f"No GPU server became free within {minutes:g} minutes; "
                        "please try again later.",
                        cause=FailureCause.API_UNAVAILABLE,
                    )
                    return None
                self._signals.clear_unless_canceling(job.id)  # a stale wake-up must not spin
                await self._signals.pause_for_capacity(CAPACITY_RETRY_SECONDS, job.id)
                continue
            except CreateOutcomeUnknown as exc:
                log.warning("job %s: create outcome unknown: %s", job.id, exc.detail)
                self._outage.enter()
                maybe_created = True
            except (ServiceUnavailable, RateLimited) as exc:
                log.warning("job %s: prediction API unavailable: %s", job.id, exc.detail)
                self._outage.enter()
                wait_at_least = exc.retry_after or 0.0
            except PredictionAPIError as exc:
                await self._outcomes.fail(job.id, api_refusal(exc), cause=FailureCause.API_REFUSED)
                return None
            if self._clock() >= deadline:
                await self._outcomes.fail(
                    job.id,
                    "The animation service has been unavailable for too long; "
                    "please try again later.",
                    cause=FailureCause.API_UNAVAILABLE,
                )
                return None
            self._status.show_unavailable(job.id)
            attempt += 1
            backoff = max(wait_at_least, min(60.0, 2.0 * 2 ** min(attempt, 5)))
            await self._signals.pause(backoff, job.id)

    async def _create_cancellable(self, job: Job, api_input: dict[str, object]) -> Prediction:
        """Send the create; if Cancel is pressed while it is held open, cancel it upstream."""
        # Progress is read only from a backend that can be polled: else its own hold stands.
        progress = self._limits.progress_poll_seconds if self._backend.features.polling else 0
        hold = self._planner.hold(job, progress)
        await self._store.confirm_lease(job.id)  # a create is paid for: still ours?
        create = asyncio.ensure_future(self._backend.create(api_input, wait=hold))
        wake = asyncio.ensure_future(self._signals.wait(job.id))
        try:
            await asyncio.wait({create, wake}, return_when=asyncio.FIRST_COMPLETED)
            if not create.done() and self._signals.cancel_wanted(job.id):
                # The create holds for up to a minute; find the prediction to stop it now.
                # (Its following cancels it again if this finds nothing yet.)
                found = await self._find_quietly(job, api_input)
                if found is not None:
                    await self._follower.try_cancel(found.id)
            return await create
        finally:
            wake.cancel()
            create.cancel()

    async def _find(self, job: Job, api_input: dict[str, object]) -> Prediction | None:
        """Look up this job's prediction, unclaimed by others, in the backend."""
        if not self._backend.features.search:
            # It may exist and nothing can find it: sending it again could pay twice.
            raise SearchIncomplete("This backend cannot look up a prediction after a crash.")
        found = await self._backend.find(
            api_input, created_after=job.submitted_at or job.created_at, accept=self._unclaimed
        )
        if found is not None:
            self._outage.leave()  # the create had gone through after all
        return found

    async def _find_quietly(self, job: Job, api_input: dict[str, object]) -> Prediction | None:
        """Like `_find`, but an error just means "not found"."""
        try:
            return await self._find(job, api_input)
        except PredictionAPIError as exc:
            log.warning("job %s: could not look up its prediction: %s", job.id, exc.detail)
            return None

    async def _unclaimed(self, prediction: Prediction) -> bool:
        """True if no job owns this prediction yet (identical requests can exist).

        An expired one is never ours to resume: a rerun needs a new prediction.
        """
        if prediction.data_removed:
            return False
        return await self._store.job_for_prediction(prediction.id) is None

    def learn(self, job: Job, prediction: Prediction) -> None:
        """Remember how long a succeeded prediction waited and ran, for later estimates."""
        self._status.ran(job.id)
        self._planner.learn(job, prediction)
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
        if self._status.history.add(timing):
            self._status.mark_stale()
        # Stored beside the post rather than before it: the history in memory already has it,
        # and a write queued behind other jobs' must not hold up this job's delivery.
        write = asyncio.create_task(self._record_timing(job.id, timing), name=f"timing-{job.id}")
        self.writes.add(write)
        write.add_done_callback(self.writes.discard)

    async def _record_timing(self, job_id: int, timing: Timing) -> None:
        """Store a measured run for the estimates after a restart."""
        try:
            await self._store.record_timing(timing)
        except Exception:
            # Whatever the store's trouble, only estimates suffer; the job itself is fine.
            log.warning("job %s: could not record its timing", job_id, exc_info=True)
