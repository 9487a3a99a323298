"""Estimated finish times, from the queue waits and run times measured on earlier jobs.

What is measured, per model (checkpoint) and step count, from the prediction API's own
timestamps of a prediction that succeeded (one clock, so no skew between bot and API):

- queue wait: `started_at - created_at`, the time the service took to give it a GPU
  (zero when those timestamps are missing);
- run time: `metrics.predict_time`, the GPU time the API reports (else
  `completed_at - started_at`).

The time a job spends in the bot's own queue is not a property of the model but of how busy
the server was, so it is not measured: the queue is simulated instead (`queue_finishes`).
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

SAMPLES_PER_KEY = 20  # the median of the newest this many observations is the estimate
# Seconds after a progress bar ends: decoding the 16 frames, writing the file, answering.
FINISH_ALLOWANCE = 3.0
MIN_LEFT = 10.0  # a running job past its estimate is said to need at least this much more


@dataclass(frozen=True, slots=True)
class Timing:
    """One observed prediction: how long it waited for a GPU and how long it ran."""

    model: str
    steps: int
    queue_wait: float
    run_time: float


@dataclass(frozen=True, slots=True)
class Estimate:
    """The expected queue wait and run time of a prediction."""

    queue_wait: float
    run_time: float

    @property
    def total(self) -> float:
        """Seconds from the create to the result."""
        return self.queue_wait + self.run_time


class TimingHistory:
    """The newest observations per model and step count, kept in memory."""

    def __init__(self, timings: Iterable[Timing] = (), *, keep: int = SAMPLES_PER_KEY) -> None:
        self._keep = keep
        self._by_key: dict[tuple[str, int], deque[Timing]] = defaultdict(lambda: deque(maxlen=keep))
        self._by_steps: dict[int, deque[Timing]] = defaultdict(lambda: deque(maxlen=keep))
        # Every queued job asks on every queue change; the medians change only on `add`.
        self._estimates: dict[tuple[str, int], Estimate | None] = {}
        self.load(timings)

    def load(self, timings: Iterable[Timing]) -> None:
        """Take stored observations, oldest first (at start)."""
        for timing in timings:
            self.add(timing)

    def add(self, timing: Timing) -> bool:
        """Remember an observation (older ones drop out); return whether any estimate moved."""
        key = (timing.model, timing.steps)
        before = (self._median(self._by_key.get(key)), self._median(self._by_steps.get(key[1])))
        self._by_key[key].append(timing)
        self._by_steps[timing.steps].append(timing)
        self._estimates.clear()
        # Only the medians of this model and step count, and of any model with these steps
        # (the fallback), can have moved; most runs leave both as they were.
        return before != (self._median(self._by_key[key]), self._median(self._by_steps[key[1]]))

    def estimate(self, model: str, steps: int) -> Estimate | None:
        """Return the medians for this model and step count, or for any model with these steps."""
        key = (model, steps)
        if key in self._estimates:
            return self._estimates[key]
        estimate = self._median(self._by_key.get(key) or self._by_steps.get(steps))
        self._estimates[key] = estimate
        return estimate

    @staticmethod
    def _median(samples: Iterable[Timing] | None) -> Estimate | None:
        """Return the median queue wait and run time of some observations, or None if none."""
        timings = list(samples or ())
        if not timings:
            return None
        return Estimate(
            queue_wait=statistics.median(t.queue_wait for t in timings),
            run_time=statistics.median(t.run_time for t in timings),
        )


def observed(
    model: str,
    steps: int,
    *,
    created_at: str | None,
    started_at: str | None,
    completed_at: str | None,
    predict_time: float | None,
) -> Timing | None:
    """Turn a succeeded prediction's timestamps into a Timing; None if its run time is unknown."""
    created, started, completed = (instant(v) for v in (created_at, started_at, completed_at))
    run_time = predict_time
    if run_time is None and started is not None and completed is not None:
        run_time = completed - started
    if run_time is None or run_time < 0:
        return None
    queue_wait = started - created if started is not None and created is not None else 0.0
    return Timing(model, steps, max(0.0, queue_wait), run_time)


def running_finish(
    estimate: Estimate | None,
    *,
    now: float,
    submitted_at: float,
    started_at: float | None = None,
    seconds_left: float | None = None,
) -> float | None:
    """When a running job should finish (unix seconds), or None if there is no telling.

    The model's own progress bar wins when it reports; otherwise history: started (on a GPU)
    plus the run time, or submitted plus the queue wait and run time. A job late against its
    estimate is given MIN_LEFT more, so the estimate never lies in the past.
    """
    if seconds_left is not None:
        return now + seconds_left + FINISH_ALLOWANCE
    if estimate is None:
        return None
    if started_at is not None:
        return max(started_at + estimate.run_time, now + MIN_LEFT)
    return max(submitted_at + estimate.queue_wait, now) + estimate.run_time


def queue_finishes(
    running_left: Sequence[float | None], waiting: Sequence[Estimate | None], slots: int
) -> list[float | None]:
    """Seconds from now until each waiting job should finish, in queue order.

    A simple simulation of one server's queue: each job starts when one of the server's
    `slots` frees up (the running jobs free theirs after `running_left` seconds), then takes
    its estimated total. It ignores the limit across all servers and the turns other servers
    take, so it is a lower bound when the bot is busy everywhere. Once any job ahead has no
    estimate, no job behind it gets one.
    """
    slots = max(1, slots)
    if any(left is None for left in running_left):
        return [None] * len(waiting)
    free_at = sorted(max(0.0, left) for left in running_left if left is not None)
    # More running than slots (resumed past the limit): those must finish before any start.
    floor = 0.0
    while len(free_at) > slots:
        floor = heapq.heappop(free_at)
    free_at += [0.0] * (slots - len(free_at))
    heapq.heapify(free_at)
    finishes: list[float | None] = []
    for estimate in waiting:
        if estimate is None:
            return finishes + [None] * (len(waiting) - len(finishes))
        start = max(floor, heapq.heappop(free_at))
        finish = start + estimate.total
        heapq.heappush(free_at, finish)
        finishes.append(finish)
    return finishes


def granularity(seconds_left: float) -> int:
    """How finely an estimate is shown: coarser the further away it is."""
    if seconds_left < 120:
        return 10
    if seconds_left < 600:
        return 30
    if seconds_left < 3600:
        return 60
    return 300


def steady(previous: int | None, raw: float, now: float) -> int:
    """Round an estimate for display, keeping the one shown while it is still about right.

    Status messages are edited only when what they show changes; an estimate that moved by a
    second on every poll would edit them every poll.
    """
    step = granularity(raw - now)
    if previous is not None and previous > now and abs(raw - previous) < step:
        return previous
    return math.ceil(raw / step) * step


def instant(value: str | None) -> float | None:
    """Parse an API timestamp (ISO 8601, `Z` or offset) to unix seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
