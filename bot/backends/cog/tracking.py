"""The pool's record of each prediction it placed, and how a server's answers update it.

A Cog server has no `GET /predictions/{id}`: what the core reads (`get`) is this record, fed
by the server's webhooks or by the answer of the request held open to it. Its timestamps are
the bot's own (the server sends none): when the create was sent, the first sign of running,
and the end.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.backends.base import Prediction
from bot.backends.cog.ids import CogPredictionId
from bot.backends.cog.outputs import discard_uploads

ENDED_KEPT = 200  # ended predictions remembered for their jobs to read (and post) them
ENDED_TTL_SECONDS = 3600.0  # and for at most an hour, as Replicate keeps its outputs
STATUSES = frozenset({"starting", "processing", "succeeded", "failed", "canceled"})
_RANK = {"starting": 0, "processing": 1}


def _newer(candidate: Prediction, known: Prediction) -> bool:
    """True if `candidate` is a later account than `known` (webhooks can arrive out of order)."""
    if known.is_terminal:
        return False
    rank = 2 if candidate.is_terminal else _RANK.get(candidate.status, 0)
    known_rank = _RANK.get(known.status, 0)
    if rank != known_rank:
        return rank > known_rank
    return len(candidate.logs) > len(known.logs) or (
        candidate.output is not None and known.output is None
    )


def timestamp(when: float | None = None) -> str:
    """An ISO 8601 time in UTC, as Replicate writes them."""
    moment = time.time() if when is None else when
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e6):06d}Z"
    )


@dataclass
class Tracked:
    """One prediction of ours on one server."""

    id: CogPredictionId
    server_id: str
    token: str
    api_input: Mapping[str, Any]
    held: bool  # followed through a request held open (no callback URL), not webhooks
    state: Prediction
    placed_wall: float = field(default_factory=time.time)
    placed_at: float = field(default_factory=time.monotonic)  # the bot's clock, never the GPU's
    files: dict[str, Path] = field(default_factory=dict)  # output URL -> the uploaded file
    hold: asyncio.Task[Any] | None = None
    accepted: bool = False  # the create returned: the end is the pool's to record
    ready_checks: int = 0  # health checks in a row that saw the server idle while it ran
    ready_since: float | None = None  # when the first of those checks was (monotonic)
    heard: bool = False  # a webhook of it arrived: the server reaches COG_CALLBACK_URL
    ended: bool = False  # its end was recorded (once)

    @classmethod
    def placed(
        cls,
        prediction_id: CogPredictionId,
        *,
        server_id: str,
        token: str,
        api_input: Mapping[str, Any],
        held: bool,
    ) -> Tracked:
        """A prediction just sent to its server."""
        state = Prediction(
            id=str(prediction_id),
            status="starting",
            input=dict(api_input),
            created_at=timestamp(),
        )
        return cls(prediction_id, server_id, token, api_input, held, state)

    def update(self, body: object) -> Prediction | None:
        """Take a server's account of the prediction; return the new state if it is newer."""
        if not isinstance(body, dict) or body.get("id") != self.server_id:
            return None
        status = body.get("status")
        if status not in STATUSES:
            return None
        now = timestamp()
        error = body.get("error")
        metrics = body.get("metrics")
        candidate = Prediction(
            id=self.state.id,
            status=str(status),
            input=self.state.input,
            output=body.get("output"),
            error=None if error in (None, "") else str(error),
            logs=str(body.get("logs") or ""),
            metrics=metrics if isinstance(metrics, dict) else {},
            created_at=self.state.created_at,
            started_at=self.state.started_at or (now if status != "starting" else None),
        )
        if candidate.is_terminal:
            candidate = replace(candidate, completed_at=now)
        if not _newer(candidate, self.state):
            return None
        self.state = candidate
        return candidate

    def lose(self, reason: str) -> Prediction:
        """Record that the server lost it; the job runs it again."""
        self.state = replace(
            self.state, status="failed", error=reason, lost=True, completed_at=timestamp()
        )
        return self.state


class EndedPredictions:
    """The last ended predictions, for `get` and downloads; their uploads go with them."""

    def __init__(
        self,
        keep: int = ENDED_KEPT,
        *,
        ttl: float = ENDED_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keep = keep
        self._ttl = ttl
        self._clock = clock
        self._ended: OrderedDict[str, tuple[float, Tracked]] = OrderedDict()  # id -> (ended, it)

    def add(self, tracked: Tracked) -> None:
        """Remember an ended prediction, forgetting (and deleting the files of) the oldest."""
        self._ended[tracked.state.id] = (self._clock(), tracked)
        self._ended.move_to_end(tracked.state.id)
        horizon = self._clock() - self._ttl
        while self._ended and (
            len(self._ended) > self._keep or next(iter(self._ended.values()))[0] < horizon
        ):
            _, (_, oldest) = self._ended.popitem(last=False)
            discard_uploads(oldest.files.values())

    def get(self, prediction_id: str) -> Tracked | None:
        """An ended prediction, if it is still remembered."""
        kept = self._ended.get(prediction_id)
        return kept[1] if kept is not None else None

    def values(self) -> list[Tracked]:
        """Every remembered prediction."""
        return [tracked for _, tracked in self._ended.values()]
