"""Prediction states a backend pushed (webhooks), kept until the job following them reads them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from bot.backends.base import Prediction

PUSHES_KEPT = 2000  # pushed predictions remembered, for jobs that were not following yet

_STATUS_ORDER = {"starting": 0, "processing": 1}


class PushInbox:
    """The newest pushed state per prediction, and which job follows which prediction."""

    def __init__(self, wake: Callable[[int], None], *, keep: int = PUSHES_KEPT) -> None:
        self._wake = wake
        self._keep = keep
        self._pushed: OrderedDict[str, Prediction] = OrderedDict()
        self._following: dict[str, int] = {}  # prediction id -> job id

    def push(self, prediction: Prediction) -> None:
        """Take a pushed state and wake the job following it; older states change nothing."""
        held = self._pushed.get(prediction.id)
        if held is not None and not fresher(prediction, held):
            return  # deliveries can arrive out of order, or twice
        self._pushed[prediction.id] = prediction
        self._pushed.move_to_end(prediction.id)
        # Pushes for predictions no job follows (yet) are kept a while, then dropped.
        while len(self._pushed) > self._keep:
            self._pushed.popitem(last=False)
        job_id = self._following.get(prediction.id)
        if job_id is not None:
            self._wake(job_id)

    def is_followed(self, prediction_id: str) -> bool:
        """True if a job of this process follows the prediction."""
        return prediction_id in self._following

    def follow(self, prediction_id: str, job_id: int) -> None:
        """Wake this job when its prediction is pushed."""
        self._following[prediction_id] = job_id

    def unfollow(self, prediction_id: str | None) -> None:
        """Forget a prediction: it ended, or an expired one is made again."""
        if prediction_id is not None:
            self._following.pop(prediction_id, None)
            self._pushed.pop(prediction_id, None)

    def newer(self, prediction_id: str, known: Prediction | None) -> Prediction | None:
        """The pushed state of a prediction if it is newer than `known`."""
        pushed = self._pushed.get(prediction_id)
        if pushed is None or (known is not None and not fresher(pushed, known)):
            return None
        return pushed


def fresher(candidate: Prediction, known: Prediction) -> bool:
    """True if `candidate` is a later state of the same prediction than `known`."""
    if known.is_terminal:
        return False
    if candidate.is_terminal:
        return True
    rank, known_rank = _STATUS_ORDER.get(candidate.status, 0), _STATUS_ORDER.get(known.status, 0)
    if rank != known_rank:
        return rank > known_rank
    return len(candidate.logs) > len(known.logs)
