"""Job steps that wait out a database outage instead of failing.

A store call of a job's life that raises StorageUnavailable is made again, with backoff, until
the database answers, and the job's status message says meanwhile that it waits for it. So a
job never fails, never starts a second prediction and never posts twice because the store
went away: it resumes at the step it stood at. A transition whose commit was made but whose
answer was lost raises InvalidTransition when made again; the job is then read again, and if
it stands where that transition puts it, the transition is taken as made.

Only what a running job does waits (`JobSteps`: the runner, the delivery, the outcomes); a
new request does not, so `/animate` during an outage gets a clear sentence at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from bot.core.eta import Timing
from bot.core.jobs import Job, JobStatus
from bot.core.reporter import Stage
from bot.core.status import StatusPublisher
from bot.storage.base import InvalidTransition, LeaseLost, StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 5.0  # a database that is back is noticed within this


def retry_delay(attempt: int) -> float:
    """How long to wait before trying a store call again after `attempt` failures (from 0)."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** min(attempt, 8))


class JobSteps(Protocol):
    """What the steps of a running job read and write (a Store is one, as is PatientStore)."""

    async def get(self, job_id: int) -> Job | None:
        """Return one job, or None if there is no such job."""
        ...

    async def set_request_message(self, job_id: int, message_id: int) -> Job:
        """Remember the message that shows the request's status."""
        ...

    async def confirm_lease(self, job_id: int) -> None:
        """Raise LeaseLost if another process holds the job now."""
        ...

    async def mark_submitted(self, job_id: int) -> Job:
        """Queued -> submitted."""
        ...

    async def mark_running(self, job_id: int, prediction_id: str) -> Job:
        """Submitted -> running."""
        ...

    async def mark_delivering(
        self, job_id: int, *, predict_time: float | None, model_version: str | None = None
    ) -> Job:
        """Running -> delivering."""
        ...

    async def mark_rerun(self, job_id: int) -> Job:
        """Running or delivering -> submitted again."""
        ...

    async def mark_done(self, job_id: int, *, result_message_id: int) -> Job:
        """Delivering -> done."""
        ...

    async def mark_failed(
        self, job_id: int, error: str, *, predict_time: float | None = None
    ) -> Job:
        """Any unfinished state -> failed."""
        ...

    async def mark_canceled(
        self, job_id: int, reason: str | None = None, *, predict_time: float | None = None
    ) -> Job:
        """A pending state -> canceled."""
        ...

    async def job_for_prediction(self, prediction_id: str) -> int | None:
        """Return the id of the job that owns a prediction, if any."""
        ...

    async def record_timing(self, timing: Timing) -> None:
        """Store a measured run."""
        ...


class StoreOutage:
    """Since when the database has not answered; says so once as it starts and as it ends."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.since: float | None = None
        # Told True as an outage starts and False as it ends (metrics, health, tests).
        self.on_change: Callable[[bool], None] | None = None

    @property
    def active(self) -> bool:
        """True while the database is believed to be away."""
        return self.since is not None

    def failed(self, detail: str) -> None:
        """Note a call the database did not answer; the first starts the outage."""
        if self.since is None:
            log.warning("the database is not answering (%s); jobs wait for it", detail)
            self.since = self._clock()
            if self.on_change is not None:
                self.on_change(True)

    def answered(self) -> None:
        """Note that the database answered; an outage under way ends."""
        if self.since is not None:
            log.info("the database is back after %.0f s; jobs go on", self._clock() - self.since)
            self.since = None
            if self.on_change is not None:
                self.on_change(False)


class PatientStore:
    """The store as a job's steps use it: each call waits for the database rather than fail."""

    def __init__(
        self, store: JobSteps, status: StatusPublisher, *, clock: Clock, sleep: Sleep
    ) -> None:
        self._store = store
        self._status = status
        self._sleep = sleep
        self.outage = StoreOutage(clock)

    async def _patiently(
        self,
        job_id: int | None,
        call: Callable[[], Awaitable[T]],
        *,
        note: bool = True,
        restore: bool = True,
    ) -> T:
        """Make `call` until the database answers, showing the job a note while it waits.

        `restore` puts back what the message said before the note, once the call is made
        (not before a final message, which replaces it anyway).
        """
        failures = 0
        shown_before = None
        noted = False
        while True:
            try:
                result = await call()
            except StorageUnavailable as exc:
                self.outage.failed(str(exc))
                if note and not noted and job_id is not None:
                    log.info("job %s waits for the database", job_id)
                    before = self._status.show_store_unavailable(job_id)
                    if before is not None and before.stage is not Stage.STORE_UNAVAILABLE:
                        shown_before = before  # (another step of the job noted it first)
                    noted = True
                await self._sleep(retry_delay(failures))
                failures += 1
                continue
            self.outage.answered()
            if restore and job_id is not None and shown_before is not None:
                self._status.publish(job_id, shown_before)
            return result

    async def _transition(
        self,
        job_id: int,
        call: Callable[[], Awaitable[Job]],
        landed: Callable[[Job], bool],
        *,
        final: bool = False,
        note: bool = True,
    ) -> Job:
        """Make a transition patiently; `landed` says whether a re-read job shows it made."""
        tries = 0

        async def attempt() -> Job:
            """One try; after an unanswered one, InvalidTransition may mean it was made."""
            nonlocal tries
            tries += 1
            try:
                return await call()
            except LeaseLost:
                raise  # made by the process that holds the job now, not by this one
            except InvalidTransition:
                if tries == 1:
                    raise
                job = await self._store.get(job_id)
                if job is None or not landed(job):
                    raise
                log.info("job %s: the step had been stored before its answer was lost", job_id)
                return job

        return await self._patiently(job_id, attempt, note=note, restore=not final)

    # Steps of a running job: patient -------------------------------------------------------

    async def get(self, job_id: int) -> Job | None:
        """Return one job, or None if there is no such job."""
        return await self._patiently(job_id, lambda: self._store.get(job_id), note=False)

    async def set_request_message(self, job_id: int, message_id: int) -> Job:
        """Remember the message that shows the request's status (made again, it is the same)."""
        return await self._transition(
            job_id,
            lambda: self._store.set_request_message(job_id, message_id),
            lambda job: job.request_message_id == message_id,
        )

    async def confirm_lease(self, job_id: int) -> None:
        """Check the job is still this process's before an act that cannot be taken back;
        while the database is away, wait (another process may be taking the job over)."""
        await self._patiently(job_id, lambda: self._store.confirm_lease(job_id))

    async def mark_submitted(self, job_id: int) -> Job:
        """Queued -> submitted."""
        return await self._transition(
            job_id,
            lambda: self._store.mark_submitted(job_id),
            lambda job: job.status is JobStatus.SUBMITTED,
        )

    async def mark_running(self, job_id: int, prediction_id: str) -> Job:
        """Submitted -> running with its prediction."""
        return await self._transition(
            job_id,
            lambda: self._store.mark_running(job_id, prediction_id),
            lambda job: job.status is JobStatus.RUNNING and job.prediction_id == prediction_id,
        )

    async def mark_delivering(
        self, job_id: int, *, predict_time: float | None, model_version: str | None = None
    ) -> Job:
        """Running -> delivering."""
        return await self._transition(
            job_id,
            lambda: self._store.mark_delivering(
                job_id, predict_time=predict_time, model_version=model_version
            ),
            lambda job: job.status is JobStatus.DELIVERING,
        )

    async def mark_rerun(self, job_id: int) -> Job:
        """Running or delivering -> submitted again."""
        return await self._transition(
            job_id,
            lambda: self._store.mark_rerun(job_id),
            lambda job: job.status is JobStatus.SUBMITTED,
        )

    async def mark_done(self, job_id: int, *, result_message_id: int) -> Job:
        """Delivering -> done; no note, as the result is already posted."""
        return await self._transition(
            job_id,
            lambda: self._store.mark_done(job_id, result_message_id=result_message_id),
            lambda job: job.status is JobStatus.DONE and job.result_message_id == result_message_id,
            final=True,
            note=False,
        )

    async def mark_failed(
        self, job_id: int, error: str, *, predict_time: float | None = None
    ) -> Job:
        """Any unfinished state -> failed."""
        return await self._transition(
            job_id,
            lambda: self._store.mark_failed(job_id, error, predict_time=predict_time),
            lambda job: job.status is JobStatus.FAILED,
            final=True,
        )

    async def mark_canceled(
        self, job_id: int, reason: str | None = None, *, predict_time: float | None = None
    ) -> Job:
        """A pending state -> canceled."""
        return await self._transition(
            job_id,
            lambda: self._store.mark_canceled(job_id, reason, predict_time=predict_time),
            lambda job: job.status is JobStatus.CANCELED,
            final=True,
        )

    async def job_for_prediction(self, prediction_id: str) -> int | None:
        """Return the id of the job that owns a prediction, if any."""
        return await self._patiently(None, lambda: self._store.job_for_prediction(prediction_id))

    async def record_timing(self, timing: Timing) -> None:
        """Store a measured run; never waited for (a lost one costs only estimates)."""
        await self._store.record_timing(timing)
