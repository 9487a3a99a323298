"""Coalescing, throttled delivery of status updates, so slow edits never hold up the work."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(eq=False)
class _Lane(Generic[V]):
    """The state of one key: the newest unsent value, what was sent, and the send in flight."""

    pending: V | None = None
    last_sent: V | None = None
    last_sent_at: float = float("-inf")
    in_flight: V | None = None
    task: asyncio.Task[None] | None = None  # the send in flight, if any
    scheduled: bool = False  # it has an entry in the due heap
    closed: bool = False

    def shown(self) -> V | None:
        """What the key will show once the send in flight (if any) lands."""
        return self.in_flight if self.task is not None else self.last_sent


class StatusRelay(Generic[K, V]):
    """Send the latest value per key, at most one send in flight and one per `interval`.

    Pending values wait in a heap ordered by when each key may send next; one drainer task
    starts the sends that are due, at most `concurrency` at once. Ten thousand waiting keys
    cost ten thousand dictionary entries, not ten thousand sleeping tasks.
    """

    def __init__(
        self,
        send: Callable[[K, V], Awaitable[None]],
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        concurrency: int = 32,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        # Room for many: one server's burst of edits, slowed by its channel's rate limit,
        # must leave sends free for every other server.
        self._concurrency = max(1, concurrency)
        self._lanes: dict[K, _Lane[V]] = {}
        # (due time, tie-breaker, key, lane): a lane settled meanwhile is skipped when popped.
        self._due: list[tuple[float, int, K, _Lane[V]]] = []
        self._order = itertools.count()
        self._sending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False

    def publish(self, key: K, value: V) -> None:
        """Queue a value for a key; an unsent older value is replaced, a repeat is dropped."""
        if self._closed:
            return
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.closed:
            return
        if value == lane.shown():
            # Back to what the message shows (or is about to): nothing left to send.
            lane.pending = None
            return
        lane.pending = value
        if not lane.scheduled and lane.task is None:
            self._schedule(key, lane)

    def prime(self, key: K, value: V) -> None:
        """Record a value as already shown (sent by other means), so it is not sent again."""
        if self._closed:
            return
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.last_sent = value
        if lane.pending == value and lane.task is None:
            lane.pending = None

    async def settle(self, key: K) -> None:
        """Drop unsent values for a key and wait for a send in flight, before a final message."""
        lane = self._lanes.pop(key, None)
        if lane is None:
            return
        lane.closed = True
        lane.pending = None
        if lane.task is not None:
            await asyncio.wait({lane.task})

    async def close(self) -> None:
        """Stop every lane and accept nothing more."""
        self._closed = True
        for key in list(self._lanes):
            await self.settle(key)
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        self._due.clear()

    def waiting(self) -> int:
        """Return how many keys have a value waiting to be sent."""
        return sum(1 for lane in self._lanes.values() if lane.pending is not None)

    def _schedule(self, key: K, lane: _Lane[V]) -> None:
        """Put a lane with a pending value in the heap at the time it may send next."""
        due = max(self._clock(), lane.last_sent_at + self._interval)
        heapq.heappush(self._due, (due, next(self._order), key, lane))
        lane.scheduled = True
        self._wake.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="status-relay")

    async def _drain(self) -> None:
        """Start each due send, sleeping until the next one is due; end when none is left."""
        while self._due or self._sending:
            self._wake.clear()
            now = self._clock()
            while self._due and len(self._sending) < self._concurrency:
                due, _, key, lane = self._due[0]
                if due > now:
                    break
                heapq.heappop(self._due)
                lane.scheduled = False
                if lane.closed or lane.pending is None:
                    continue
                self._start(key, lane)
            if self._due and len(self._sending) < self._concurrency:
                await self._nap(self._due[0][0] - now)
            else:
                # Idle or at the limit: a publish or a finished send wakes us.
                await self._wake.wait()

    async def _nap(self, seconds: float) -> None:
        """Sleep until the next send is due, or until a publish or finished send wakes us."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    def _start(self, key: K, lane: _Lane[V]) -> None:
        """Send a lane's pending value in a task of its own."""
        value, lane.pending = lane.pending, None
        assert value is not None
        lane.in_flight = value
        lane.last_sent_at = self._clock()
        task = asyncio.create_task(self._send_one(key, lane, value), name=f"status-{key}")
        lane.task = task
        self._sending.add(task)

    async def _send_one(self, key: K, lane: _Lane[V], value: V) -> None:
        """Send one value; afterwards queue the lane again if a newer value arrived meanwhile."""
        try:
            await self._send(key, value)
            lane.last_sent = value
        except asyncio.CancelledError:
            raise
        except Exception:
            # A status edit is a courtesy: its failure must never touch the job.
            log.warning("status update for %s failed", key, exc_info=True)
        finally:
            lane.task = None
            lane.in_flight = None
            task = asyncio.current_task()
            if task is not None:
                self._sending.discard(task)
            if lane.pending is not None and not lane.closed and not self._closed:
                self._schedule(key, lane)
            self._wake.set()
