"""How a job ends badly: recorded in the store first, then told to the requester."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum

from bot.backends.base import PredictionAPIError
from bot.core.jobs import Job, JobStatus
from bot.core.reporter import JobReporter
from bot.core.status import StatusPublisher
from bot.core.store_outage import JobSteps
from bot.observability.metrics import BotMetrics
from bot.storage.base import InvalidTransition

log = logging.getLogger(__name__)

_BAD_CREDENTIALS = (
    "The bot's prediction API token was refused; the server owner needs to fix the bot's "
    "configuration."
)


class FailureCause(StrEnum):
    """Why a job failed, in the few classes the metrics count it by."""

    BOT_ERROR = "bot_error"  # a bug or a crash on the bot's side
    API_REFUSED = "api_refused"  # the backend refused the request (4xx)
    API_UNAVAILABLE = "api_unavailable"  # the backend stayed down past the patience
    PREDICTION_FAILED = "prediction_failed"  # the model ran and failed, or was stopped upstream
    TIMEOUT = "timeout"  # it did not start, or did not end, in time
    UNCERTAIN = "uncertain"  # the bot could not tell whether a create went through
    DOWNLOAD = "download"  # the output could not be fetched
    MEDIA = "media"  # the output could not be converted or made to fit
    EXPIRED = "expired"  # the output was gone before it was posted
    DELIVERY = "delivery"  # Discord refused the post


class JobOutcomes:
    """Record failures and cancellations and report them, after any pending status edit."""

    def __init__(
        self,
        store: JobSteps,
        status: StatusPublisher,
        reporter: Callable[[], JobReporter],
        metrics: BotMetrics,
    ) -> None:
        self._store = store
        self._status = status
        self._reporter = reporter
        self._metrics = metrics

    async def fail(
        self,
        job_id: int,
        reason: str,
        *,
        predict_time: float | None = None,
        cause: FailureCause = FailureCause.BOT_ERROR,
    ) -> None:
        """Record a failure (and any GPU time it was billed) and tell the requester."""
        try:
            job = await self._store.mark_failed(job_id, reason, predict_time=predict_time)
        except InvalidTransition:
            return
        self._metrics.job_finished("failed", cause.value)
        self._metrics.billed(predict_time, self._metrics.backend_of(job.prediction_id))
        log.info("job %s failed: %s", job_id, reason)
        await self.report(job, lambda reporter: reporter.report_failure(job, reason))

    async def cancel(self, job_id: int, reason: str, *, predict_time: float | None = None) -> None:
        """Record a cancellation (and any GPU time it was billed) and show it."""
        try:
            job = await self._store.mark_canceled(job_id, reason, predict_time=predict_time)
        except InvalidTransition:
            return
        self._metrics.job_finished("canceled")
        self._metrics.billed(predict_time, self._metrics.backend_of(job.prediction_id))
        await self.report(job, lambda reporter: reporter.report_canceled(job))

    async def report_canceled(self, job: Job) -> None:
        """Count and show a cancellation already stored (by the shared queue's own write)."""
        self._metrics.job_finished("canceled")
        await self.report(job, lambda reporter: reporter.report_canceled(job))

    async def report(self, job: Job, call: Callable[[JobReporter], Awaitable[None]]) -> None:
        """Send a final word on a job after any pending status edit; never raise into the job."""
        await self._status.settle(job.id)
        try:
            await call(self._reporter())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("could not report on job %s", job.id, exc_info=True)

    async def report_final(self, job: Job) -> None:
        """Show a finished job's outcome on its message."""
        if job.status is JobStatus.CANCELED:
            await self.report(job, lambda reporter: reporter.report_canceled(job))
        elif job.status is JobStatus.FAILED:
            reason = job.error or "The request failed."
            await self.report(job, lambda reporter: reporter.report_failure(job, reason))


def api_refusal(exc: PredictionAPIError) -> str:
    """Word an API refusal for the requester."""
    if exc.status in (401, 403):
        return _BAD_CREDENTIALS
    return f"The animation service refused the request: {exc.detail}"
