"""The Backend seam: what the core needs from whatever runs predictions, in its own terms.

A backend (Replicate's HTTP API or a gateway serving it; later self-hosted servers) answers in
`Prediction`s and raises the errors below; nothing outside a backend knows its URLs or headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})


class PredictionAPIError(Exception):
    """The API refused or failed a request; `detail` is its explanation."""

    def __init__(self, detail: str, *, status: int | None = None, title: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.title = title
        self.retry_after: float | None = None  # seconds the API asked us to wait, if any


class RateLimited(PredictionAPIError):
    """The API kept answering 429, or asked for a longer wait than the client makes."""


class ServiceUnavailable(PredictionAPIError):
    """The API could not be reached or kept failing with server errors."""


class CreateOutcomeUnknown(ServiceUnavailable):
    """A create was sent but no answer came back: the prediction may exist."""


class SearchIncomplete(PredictionAPIError):
    """The prediction list had more pages than a search may read: nothing can be concluded."""


class PredictionNotFound(PredictionAPIError):
    """The API does not know this prediction id."""


class AtCapacity(PredictionAPIError):
    """Every server is busy: nothing was sent; the create can be tried again when one frees."""


class PredictionLost(Exception):
    """The server running a prediction lost it (it stopped answering or restarted).

    Not a PredictionAPIError: nothing about the request was wrong, and the job does not fail;
    the same input and seed are run again, which makes the same animation.
    """


class DownloadError(Exception):
    """An output file could not be fetched."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """The job run a backend call is made for, for backends whose client names predictions."""

    key: str  # unique to one job and one run of it (`job-7-r0`): a restart names it alike
    api_input: Mapping[str, Any]


# Set by the runner in each job's task; a backend that lets its client choose prediction ids
# (self-hosted Cog servers) names the prediction after it, so a restart can find it again by
# the same name, and resends the input of a prediction it must look up after a restart.
current_attempt: ContextVar[Attempt | None] = ContextVar("current_attempt", default=None)


@dataclass(frozen=True, slots=True)
class Prediction:
    """A prediction as the API last reported it."""

    id: str
    status: str
    input: Mapping[str, Any] = field(default_factory=dict)
    output: Any = None
    error: str | None = None
    logs: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    version: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    data_removed: bool = False
    # The backend lost it (its server stopped or restarted): the core runs it again.
    lost: bool = False

    @classmethod
    def from_json(cls, data: object) -> Prediction:
        """Parse an API prediction object, refusing anything without an id and status."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise PredictionAPIError("The prediction API returned an unexpected answer.")
        status = data.get("status")
        if not isinstance(status, str):
            raise PredictionAPIError("The prediction API returned a prediction without status.")
        error = data.get("error")
        return cls(
            id=data["id"],
            status=status,
            input=data.get("input") or {},
            output=data.get("output"),
            error=None if error is None else str(error),
            logs=data.get("logs") or "",
            metrics=data.get("metrics") or {},
            version=data.get("version"),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            completed_at=data.get("completed_at"),
            data_removed=bool(data.get("data_removed", False)),
        )

    @property
    def is_terminal(self) -> bool:
        """True once the prediction will not change any more."""
        return self.status in TERMINAL_STATUSES

    @property
    def output_urls(self) -> list[str]:
        """The output as a list of URLs or data URIs, whatever shape the API used."""
        output = self.output
        if isinstance(output, str):
            return [output]
        if isinstance(output, list):
            return [item for item in output if isinstance(item, str)]
        return []

    @property
    def predict_time(self) -> float | None:
        """GPU seconds billed, once known."""
        value = self.metrics.get("predict_time")
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True)
class BackendFeatures:
    """What a backend can do, so the core knows how to follow its predictions."""

    # `get` reads a prediction's current state. Without it the core learns of progress and the
    # end only from pushes; `get` is still asked once for what a restart did not keep (the
    # state of a prediction it resumes, an output it is to post).
    polling: bool
    pushes: bool  # each prediction's end (and progress) is pushed to the bot
    search: bool  # `find` can look up a prediction whose create's answer was lost


class Backend(Protocol):
    """Creates, follows, finds, cancels and downloads predictions of the model."""

    @property
    def features(self) -> BackendFeatures:
        """What this backend can do."""
        ...

    def has_capacity(self, starting: int) -> bool:
        """True if one more prediction could start now, besides `starting` on their way."""
        ...

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
        """Start a prediction; with `wait`, hold the request until it ends or a window closes.

        `wait` True holds for the backend's longest window, a number of seconds for at most
        that long (a short hold shows progress sooner), False or 0 not at all; None: the
        backend's own choice.
        """
        ...

    async def get(self, prediction_id: str) -> Prediction:
        """Read a prediction's current state."""
        ...

    async def get_once(self, prediction_id: str, *, timeout: float) -> Prediction:
        """Read a prediction's state in one attempt of at most `timeout` seconds, or raise.

        For a read that may be skipped (a progress poll): it never retries nor waits out a 429.
        """
        ...

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
    ) -> Prediction | None:
        """Find a prediction with exactly this input created after a time (after a crash)."""
        ...

    async def cancel(self, prediction_id: str) -> Prediction:
        """Ask for a prediction to stop; cancelling twice is harmless."""
        ...

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        """Fetch an output into `dest` within the size cap and return its size."""
        ...


@runtime_checkable
class PartlyFree(Protocol):
    """A backend some of whose requests go to the bot's own GPUs, outside the API budget."""

    def unmetered(self, reference: str | None) -> bool:
        """True if a request about this prediction id or output URL costs no API budget.

        None asks about a create sent now; "" about a search.
        """
        ...
