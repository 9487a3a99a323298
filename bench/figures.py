"""Figures for the throughput benchmark: which budget each request came from, peaks, percentiles."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar

from bot.core.budgets import ApiUse, LocalApiBudget
from bot.core.relay import StatusRelay
from bot.core.reporter import JobStatusUpdate, Stage

# What the request about to go from this task is for: set as the budget grants it, read by the
# HTTP trace of the same task (the follower's read follows its grant without a task between).
API_USE: ContextVar[ApiUse] = ContextVar("api_use", default=ApiUse.ENDING)


class LabellingApiBudget(LocalApiBudget):
    """The bot's own API budget, which also labels each granted request for the trace."""

    async def spend(self, use: ApiUse) -> None:
        """Spend as the bot does, then label the request."""
        await super().spend(use)
        API_USE.set(use)

    async def try_progress(self, running: int) -> bool:
        """Try as the bot does; label a granted progress poll."""
        granted = await super().try_progress(running)
        if granted:
            API_USE.set(ApiUse.PROGRESS)
        return granted


def peak(times: list[float], period: float) -> int:
    """The most events within any window of `period` seconds."""
    window: deque[float] = deque()
    best = 0
    for moment in sorted(times):
        window.append(moment)
        while window[0] <= moment - period + 1e-9:  # float sums of a manual clock's steps
            window.popleft()
        best = max(best, len(window))
    return best


def over_limit(times: list[float], period: float, limit: int) -> int:
    """Events beyond `limit` in a sliding window: what a server enforcing it would refuse."""
    window: deque[float] = deque()
    refused = 0
    for moment in sorted(times):
        while window and window[0] <= moment - period:
            window.popleft()
        if len(window) >= limit:
            refused += 1
            continue
        window.append(moment)
    return refused


def per_second(times: list[float]) -> list[int]:
    """Events in each whole second from the first to the last."""
    if not times:
        return []
    start = math.floor(min(times))
    counts = [0] * (math.floor(max(times)) - start + 1)
    for moment in times:
        counts[math.floor(moment) - start] += 1
    return counts


def pct(values: list[float], percent: float) -> float:
    """The given percentile of values (nan if none)."""
    if not values:
        return float("nan")
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1]


def state_of(update: JobStatusUpdate) -> tuple[Stage, int | None]:
    """What a member reads as the job's state: its stage, and its place while queued."""
    return update.stage, update.position if update.stage is Stage.QUEUED else None


class Staleness:
    """How long each message showed an older state than the job's, from the relay's side.

    A message falls behind when a state other than the one it shows is published, and catches
    up when it shows the newest; progress ticks and estimates are not states (ticks are timed
    apart, as the relay's own lag for edits of running jobs).
    """

    def __init__(self, relay: StatusRelay[int, JobStatusUpdate], clock: Callable[[], float]):
        self._clock = clock
        self._shown: dict[int, tuple[Stage, int | None]] = {}
        self._latest: dict[int, tuple[Stage, int | None]] = {}
        self._behind: dict[int, float] = {}
        self.running: list[float] = []
        self.queued: list[float] = []
        self.ticks: list[float] = []
        publish, prime = relay.publish, relay.prime

        def on_publish(job_id: int, update: JobStatusUpdate) -> None:
            self._published(job_id, state_of(update))
            publish(job_id, update)

        def on_prime(job_id: int, update: JobStatusUpdate) -> None:
            self._shown[job_id] = state_of(update)
            if self._latest.get(job_id) == self._shown[job_id]:
                self._behind.pop(job_id, None)
            prime(job_id, update)

        relay.publish = on_publish  # type: ignore[method-assign]
        relay.prime = on_prime  # type: ignore[method-assign]
        relay.observer = self._sent

    def _published(self, job_id: int, state: tuple[Stage, int | None]) -> None:
        """A state was published for the job: the message is behind unless it shows it."""
        self._latest[job_id] = state
        if self._shown.get(job_id) == state:
            self._behind.pop(job_id, None)
        elif job_id not in self._behind:
            self._behind[job_id] = self._clock()

    def _sent(self, job_id: int, update: JobStatusUpdate, lag: float) -> None:
        """An edit went out: if it shows the newest state, the message has caught up."""
        state = self._shown[job_id] = state_of(update)
        if update.stage in (Stage.SAMPLING, Stage.RENDERING):
            self.ticks.append(lag)
        since = self._behind.get(job_id)
        if since is not None and self._latest.get(job_id) == state:
            del self._behind[job_id]
            (self.queued if update.stage is Stage.QUEUED else self.running).append(
                self._clock() - since
            )
