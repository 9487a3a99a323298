"""Following a running prediction to its end: polls aimed at the foretold end, or pushes."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from bot.backends.base import (
    Prediction,
    PredictionAPIError,
    PredictionLost,
    PredictionNotFound,
    RateLimited,
    ServiceUnavailable,
)
from bot.core.context import JobContext
from bot.core.jobs import Job
from bot.core.outcomes import FailureCause, api_refusal
from bot.core.progress import parse_progress

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class PredictionFollower:
    """Reads a job's prediction until it ends, showing its progress and minding the limits."""

    def __init__(self, ctx: JobContext) -> None:
        self._backend = ctx.backend
        self._signals = ctx.signals
        self._pushes = ctx.pushes
        self._status = ctx.status
        self._outcomes = ctx.outcomes
        self._outage = ctx.outage
        self._planner = ctx.planner
        self._limits = ctx.limits
        self._clock = ctx.clock
        self._wall = ctx.wall_clock
        self._following: set[int] = set()  # jobs being followed: progress polls share among them

    async def follow(self, job: Job, prediction: Prediction | None) -> Prediction | None:
        """Follow until the prediction ends; return it if it succeeded, else settle the job."""
        self._following.add(job.id)
        try:
            return await self._follow(job, prediction)
        finally:
            self._following.discard(job.id)

    async def _follow(self, job: Job, prediction: Prediction | None) -> Prediction | None:
        """Poll (or wait for pushes) until the prediction ends, showing its progress."""
        assert job.prediction_id is not None
        # Wall clock from the stored start, so the deadline holds across restarts.
        started = job.started_at if job.started_at is not None else self._wall()
        polls = 0
        cancel_sent = False
        self._pushes.follow(job.prediction_id, job.id)
        # Without polling, progress and the end come only as pushes; a resumed job (which
        # knows nothing yet) still reads its prediction once, below.
        can_poll = self._backend.features.polling
        while prediction is None or not prediction.is_terminal:
            if self._signals.cancel_wanted(job.id):
                self._signals.clear(job.id)
                if not cancel_sent:
                    cancel_sent = await self.try_cancel(job.prediction_id)
            if prediction is not None:
                progress = parse_progress(prediction.logs, job.request.steps)
                self._status.show_progress(job, prediction, progress)
                if await self._past_deadline(job, prediction, self._wall() - started):
                    return None
                # The poll aimed at the foretold end, unless progress is due to be read first.
                aimed = self._planner.delay(job, prediction, progress, polls)
                # Waiting for a GPU has no bar to move: its backoff polls are aimed ones.
                gap = self._progress_gap() if prediction.status == "processing" else math.inf
                woken = await self._signals.pause(min(aimed, gap), job.id)
                pushed = self._take_pushed(job, prediction)
                if pushed is not None:
                    prediction = pushed
                    continue
                if (woken and not self._signals.cancel_wanted(job.id)) or not can_poll:
                    continue  # a push older than what we know, or no way to ask: wait on
                if gap < aimed and not self._signals.cancel_wanted(job.id):
                    try:
                        fresh = await self._backend.get_progress(
                            job.prediction_id, len(self._following), timeout=aimed - gap
                        )
                        # None: no room in the budget; the bar waits, the aimed poll does not.
                        prediction = fresh or prediction
                    except PredictionAPIError as exc:
                        # Skipped: the aimed poll, which waits out an outage, comes on time.
                        log.info("job %s: progress poll failed: %s", job.id, exc.detail)
                    continue
            else:
                prediction = self._take_pushed(job, None)
                if prediction is not None:
                    continue
            prediction = await self.fetch(job)
            if prediction is None:
                return None
            polls += 1
        if prediction.lost:
            raise PredictionLost(prediction.error or "its server lost it")  # the runner reruns it
        return await self._settle_end(job, prediction)

    def _progress_gap(self) -> float:
        """Seconds until a progress poll is due: the budget's share for each running job."""
        seconds = self._limits.progress_poll_seconds
        features = self._backend.features
        if seconds <= 0 or features.pushes or not features.polling:
            return math.inf  # off, or progress comes pushed
        running = len(self._following)
        # As often as both budgets carry: a tick Discord cannot show is not worth reading.
        api = self._backend.budget.progress_interval(running, seconds)
        return max(api, self._status.progress_interval(running))

    async def _past_deadline(self, job: Job, prediction: Prediction, waited: float) -> bool:
        """Stop a prediction stuck waiting for a GPU or running too long; True if it was."""
        assert job.prediction_id is not None
        # `prediction` is always a fresh answer here: an outage waits inside the fetch.
        if prediction.status == "starting" and waited > self._limits.start_timeout:
            # Stuck upstream (no capacity, a broken boot): free the member's slot.
            stopped = await self.try_cancel(job.prediction_id)
            minutes = self._limits.start_timeout / 60
            await self._outcomes.fail(
                job.id,
                f"The animation service did not start this request within {minutes:g} "
                f"minutes, so {'it was canceled' if stopped else 'the bot gave up on it'}"
                "; please try again later.",
                cause=FailureCause.TIMEOUT,
            )
            return True
        if waited > self._limits.prediction_timeout:
            stopped = await self.try_cancel(job.prediction_id)
            minutes = self._limits.prediction_timeout / 60
            await self._outcomes.fail(
                job.id,
                f"The animation took longer than {minutes:g} minutes, so "
                f"{'it was stopped' if stopped else 'the bot gave up on it'}.",
                cause=FailureCause.TIMEOUT,
            )
            return True
        return False

    async def _settle_end(self, job: Job, prediction: Prediction) -> Prediction | None:
        """Return a succeeded prediction; record any other end (and its billed GPU time)."""
        # A prediction that ends any other way than success is still billed for its GPU time.
        billed = prediction.predict_time
        if self._signals.cancel_wanted(job.id):
            # Whatever the outcome, the member was told it is being stopped: keep that promise.
            await self._outcomes.cancel(job.id, "Canceled.", predict_time=billed)
            return None
        if prediction.status == "succeeded":
            return prediction
        if prediction.status in ("canceled", "aborted"):
            await self._outcomes.fail(
                job.id,
                "The animation service stopped this request.",
                predict_time=billed,
                cause=FailureCause.PREDICTION_FAILED,
            )
            return None
        reason = (prediction.error or "").strip() or "The animation service reported a failure."
        await self._outcomes.fail(
            job.id,
            f"The animation failed: {reason}",
            predict_time=billed,
            cause=FailureCause.PREDICTION_FAILED,
        )
        return None

    async def fetch(self, job: Job) -> Prediction | None:
        """Read the job's prediction, waiting out an outage; None once the job has failed."""
        assert job.prediction_id is not None
        outage_since: float | None = None
        while True:
            try:
                prediction = await self._backend.get(job.prediction_id)
            except PredictionNotFound:
                await self._outcomes.fail(
                    job.id,
                    "The animation service has no record of this request.",
                    cause=FailureCause.API_REFUSED,
                )
                return None
            except (ServiceUnavailable, RateLimited) as exc:
                # The prediction is paid for and may still run or hold its output: keep at it.
                now = self._clock()
                outage_since = outage_since if outage_since is not None else now
                log.warning("job %s: reading its prediction failed: %s", job.id, exc.detail)
                self._outage.enter()
                if now - outage_since > self._limits.outage_patience:
                    await self._outcomes.fail(
                        job.id,
                        "Lost contact with the animation service; please try again.",
                        cause=FailureCause.API_UNAVAILABLE,
                    )
                    return None
                self._status.show_unavailable(job.id)
                # A Cancel press is served once the API answers; it must not end this wait.
                self._signals.clear(job.id)
                await self._signals.pause(max(10.0, exc.retry_after or 0.0), job.id)
                continue
            except PredictionAPIError as exc:
                await self._outcomes.fail(job.id, api_refusal(exc), cause=FailureCause.API_REFUSED)
                return None
            self._outage.leave()
            return prediction

    async def try_cancel(self, prediction_id: str) -> bool:
        """Ask the backend to cancel; return whether it accepted."""
        try:
            await self._backend.cancel(prediction_id)
        except PredictionAPIError as exc:
            log.warning("cancel of %s failed: %s", prediction_id, exc.detail)
            return False
        return True

    def _take_pushed(self, job: Job, known: Prediction | None) -> Prediction | None:
        """Return the pushed state of the job's prediction if it is newer than `known`."""
        assert job.prediction_id is not None
        self._signals.clear_unless_canceling(job.id)
        return self._pushes.newer(job.prediction_id, known)
