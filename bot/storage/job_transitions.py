"""Every state change of a job, the same in every store: each names the states it may start
from, and the store applies it in one guarded UPDATE (`_update`) or raises InvalidTransition."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from bot.core.jobs import Job, JobStatus
from bot.core.redaction import scrub
from bot.storage.job_rows import UNFINISHED

Clock = Callable[[], float]


class Increment:
    """A column change that adds one to the stored value."""


class KeepPredictTime:
    """A column change that adds the stored predict_time (the GPU time already paid for)."""


class JobTransitions(ABC):
    """The transitions of the `JobRecords` protocol, written once for every store."""

    _clock: Clock

    @abstractmethod
    async def _update(
        self, job_id: int, allowed_from: Iterable[JobStatus] | None, **changes: Any
    ) -> Job:
        """Apply changes in one statement, only if the job is in an allowed state."""

    async def set_request_message(self, job_id: int, message_id: int) -> Job:
        """Remember the message that shows the request's status; its token is no longer needed."""
        return await self._update(
            job_id, None, request_message_id=message_id, interaction_token=None
        )

    async def mark_submitted(self, job_id: int) -> Job:
        """Queued -> submitted: written before the create request is sent."""
        return await self._update(
            job_id, (JobStatus.QUEUED,), status=JobStatus.SUBMITTED, submitted_at=self._clock()
        )

    async def mark_running(self, job_id: int, prediction_id: str) -> Job:
        """Submitted -> running: the API accepted the prediction."""
        return await self._update(
            job_id,
            (JobStatus.SUBMITTED, JobStatus.RUNNING),
            status=JobStatus.RUNNING,
            prediction_id=prediction_id,
            started_at=self._clock(),
        )

    async def mark_delivering(
        self, job_id: int, *, predict_time: float | None, model_version: str | None = None
    ) -> Job:
        """Running -> delivering: the prediction succeeded and the result is being posted."""
        return await self._update(
            job_id,
            (JobStatus.RUNNING, JobStatus.DELIVERING),
            status=JobStatus.DELIVERING,
            predict_time=predict_time,
            model_version=model_version,
        )

    async def mark_rerun(self, job_id: int) -> Job:
        """Running or delivering -> submitted again: the output expired before it was posted."""
        return await self._update(
            job_id,
            (JobStatus.RUNNING, JobStatus.DELIVERING),
            status=JobStatus.SUBMITTED,
            prediction_id=None,
            # The first run was billed too: keep its GPU time for the usage figures.
            earlier_predict_time=KeepPredictTime(),
            predict_time=None,
            submitted_at=self._clock(),
            started_at=None,
            reruns=Increment(),
        )

    async def mark_done(self, job_id: int, *, result_message_id: int) -> Job:
        """Delivering -> done: the result message exists."""
        return await self._update(
            job_id,
            (JobStatus.DELIVERING,),
            status=JobStatus.DONE,
            result_message_id=result_message_id,
            completed_at=self._clock(),
            interaction_token=None,
        )

    async def mark_failed(
        self, job_id: int, error: str, *, predict_time: float | None = None
    ) -> Job:
        """Any unfinished state -> failed, with the reason shown to the requester.

        `predict_time` is the GPU time a failed prediction was still billed for. The reason
        may quote the API or an exception: it is stored with credentials masked.
        """
        billed = {} if predict_time is None else {"predict_time": predict_time}
        return await self._update(
            job_id,
            tuple(JobStatus(s) for s in UNFINISHED),
            status=JobStatus.FAILED,
            error=scrub(error),
            completed_at=self._clock(),
            interaction_token=None,
            **billed,
        )

    async def mark_canceled(
        self, job_id: int, reason: str | None = None, *, predict_time: float | None = None
    ) -> Job:
        """A pending state -> canceled (with the GPU time billed before it stopped, if any)."""
        billed = {} if predict_time is None else {"predict_time": predict_time}
        return await self._update(
            job_id,
            (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING),
            status=JobStatus.CANCELED,
            error=None if reason is None else scrub(reason),
            completed_at=self._clock(),
            interaction_token=None,
            **billed,
        )

    async def mark_deleted(self, job_id: int) -> Job:
        """Record that the result message was deleted."""
        return await self._update(job_id, None, deleted=True)
