"""What the core tells members about their jobs, and the protocol the Discord side implements."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bot import media
from bot.core.jobs import Job


class Stage(StrEnum):
    """What a member is told about a job that is not finished."""

    QUEUED = "queued"
    STARTING = "starting"
    SAMPLING = "sampling"
    RENDERING = "rendering"
    UPLOADING = "uploading"
    UNAVAILABLE = "unavailable"
    STORE_UNAVAILABLE = "store_unavailable"  # the bot's own database is not answering


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


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One line of a guild's queue as shown to members."""

    job: Job
    position: int | None  # None while running
    status: JobStatusUpdate  # what its status message says (or would)


class CancelOutcome(StrEnum):
    """What a cancel request achieved."""

    CANCELED = "canceled"  # it was still queued and is gone
    CANCELING = "canceling"  # it is running; the API was asked to stop it
    TOO_LATE = "too_late"  # it had already finished


class DeliveryFailed(Exception):
    """The result could not be posted; the message says why, for the requester."""


class JobReporter(Protocol):
    """How the core speaks to members; the Discord cog implements it."""

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
