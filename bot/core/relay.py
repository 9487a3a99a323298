"""Coalescing, throttled delivery of status updates, so slow edits never hold up the work."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from bot.core.budgets import EDIT_PATIENCE, DiscordBudget, EditKind

log = logging.getLogger(__name__)

# Where each kind of edit waits for the budget: changes of stage first, then edits that waited
# out the patience, then queue places, estimates and progress ticks.
AGED = 1
_PLACES = {EditKind.STAGE: 0, EditKind.POSITION: 2, EditKind.ETA: 3, EditKind.PROGRESS: 4}

K = TypeVar("K")
V = TypeVar("V")


@dataclass(eq=False)
class _Lane(Generic[V]):
    """The state of one key: the newest unsent value, what was sent, and the send in flight."""

    pending: V | None = None
    last_sent: V | None = None
    last_sent_at: float = float("-inf")
    in_flight: V | None = None
    pending_since: float = 0.0  # when what it shows first fell behind what it should
    task: asyncio.Task[None] | None = None  # the send in flight, if any
    scheduled: bool = False  # it has an entry in the due heap or a ready queue
    place: int | None = None  # the ready queue it waits in (older entries elsewhere are void)
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
        budget: DiscordBudget | None = None,
        kind_of: Callable[[V | None, V], EditKind] | None = None,
        aged_first: Callable[[V], bool] | None = None,
    ) -> None:
        self._send = send
        # Sends wait for room in Discord's budget, the lesser kinds of edit first (kind_of
        # compares what a message shows with what it is to show).
        self._budget = budget
        self._kind_of = kind_of
        # Told of each value shown and how long the message lagged behind it (benchmarks).
        self.observer: Callable[[K, V, float], None] | None = None
        # Told of each value dropped unsent (metrics): "coalesced" when a newer one replaced
        # it, "settled" when the final message came first.
        self.on_shed: Callable[[Literal["coalesced", "settled"]], None] | None = None
        self._interval = interval
        # Among edits that waited out the patience, those it says go first (running jobs'
        # edits, ahead of deep queue places), then the longest waiting.
        self._aged_first = aged_first
        self._clock = clock
        self._sleep = sleep
        # Room for many: one server's burst of edits, slowed by its channel's rate limit,
        # must leave sends free for every other server.
        self._concurrency = max(1, concurrency)
        self._lanes: dict[K, _Lane[V]] = {}
        # Lanes due, waiting for a send slot or room in the budget: a queue per kind of edit
        # (and one for edits that waited out the patience, after changes of stage), each in
        # the order its lanes came due. A lane closed meanwhile is dropped when reached.
        self._ready: list[deque[tuple[K, _Lane[V]]]] = [deque() for _ in range(len(_PLACES) + 1)]
        # The aged edits (place AGED; `_ready[AGED]` stays empty): (rank, since, tie, key, lane).
        self._aged: list[tuple[int, float, int, K, _Lane[V]]] = []
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
        if lane.pending is None:
            lane.pending_since = self._clock()
        elif self.on_shed is not None:
            self.on_shed("coalesced")
        lane.pending = value
        if not lane.scheduled and lane.task is None:
            self._schedule(key, lane)
        elif lane.place is not None and _PLACES[self._kind(lane)] < lane.place:
            self._queue(key, lane, _PLACES[self._kind(lane)])  # now a more important edit

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
        """Drop unsent values for a key and wait for a send in flight, before a final message.

        The key stays closed until it is forgotten: a later value must not edit over the
        final message.
        """
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.closed = True
        if lane.pending is not None and self.on_shed is not None:
            self.on_shed("settled")
        lane.pending = None
        if lane.task is not None:
            await asyncio.wait({lane.task})

    def forget(self, key: K) -> None:
        """Drop a key whose messages are done with (a settled key stays closed until then)."""
        self._lanes.pop(key, None)

    async def close(self) -> None:
        """Stop every lane and accept nothing more."""
        self._closed = True
        for key in list(self._lanes):
            await self.settle(key)
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        self._due.clear()
        for queue in self._ready:
            queue.clear()
        self._aged.clear()

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
        while self._due or self._sending or self._aged or any(self._ready):
            self._wake.clear()
            now = self._clock()
            self._take_due(now)
            blocked = await self._start_ready(now)
            if len(self._sending) >= self._concurrency:
                await self._wake.wait()  # a finished send wakes us
                continue
            until = self._due[0][0] if self._due else float("inf")
            if blocked and self._budget is not None:
                until = min(until, now + self._budget.retry_in())
            if until < float("inf"):
                await self._nap(until - now)
            else:
                await self._wake.wait()  # idle: a publish wakes us

    def _take_due(self, now: float) -> None:
        """Move the lanes due now, with something to send, to the queue of their kind."""
        while self._due and self._due[0][0] <= now:
            _, _, key, lane = heapq.heappop(self._due)
            if lane.closed or lane.pending is None:
                lane.scheduled = False
                continue
            self._queue(key, lane, _PLACES[self._kind(lane)])  # still `scheduled`

    def _queue(self, key: K, lane: _Lane[V], place: int) -> None:
        """Make a lane wait in a ready queue (voiding any entry it has in another)."""
        lane.place = place
        if place == AGED:
            pending = lane.pending
            first = (
                self._aged_first is not None and pending is not None and self._aged_first(pending)
            )
            rank = 0 if first else 1
            heapq.heappush(self._aged, (rank, lane.pending_since, next(self._order), key, lane))
        else:
            self._ready[place].append((key, lane))

    def _head(self, place: int) -> tuple[K, _Lane[V]] | None:
        """The lane first in a ready queue, if any."""
        if place == AGED:
            return (self._aged[0][3], self._aged[0][4]) if self._aged else None
        queue = self._ready[place]
        return queue[0] if queue else None

    def _pop(self, place: int) -> None:
        """Take the first lane out of a ready queue."""
        if place == AGED:
            heapq.heappop(self._aged)
        else:
            self._ready[place].popleft()

    async def _start_ready(self, now: float) -> bool:
        """Start ready sends, most important first; True if the budget stopped them.

        An edit refused stops the pass: the lesser kinds have smaller shares of the budget.
        """
        self._promote_aged(now)
        for place in range(len(self._ready)):
            while (head := self._head(place)) and len(self._sending) < self._concurrency:
                key, lane = head
                if lane.place != place:
                    self._pop(place)  # void: the lane waits in another queue now
                    continue
                if lane.closed or lane.pending is None:
                    self._pop(place)
                    lane.scheduled, lane.place = False, None
                    continue
                kind = self._kind(lane)
                if place != AGED and place != _PLACES[kind]:
                    # Coalesced meanwhile into a change of another kind: wait in its queue.
                    self._pop(place)
                    self._queue(key, lane, _PLACES[kind])
                    continue
                if self._budget is not None and not await self._budget.try_edit(
                    kind, now - lane.pending_since
                ):
                    return True
                self._pop(place)
                lane.scheduled, lane.place = False, None
                self._start(key, lane)
        return False

    def _promote_aged(self, now: float) -> None:
        """Move edits that have waited out the patience to the queue after stage changes."""
        for place in range(AGED + 1, len(self._ready)):
            queue = self._ready[place]
            # Each queue is in the order its lanes fell behind: the aged ones are at its head.
            while queue and (
                queue[0][1].place != place or now - queue[0][1].pending_since >= EDIT_PATIENCE
            ):
                key, lane = queue.popleft()
                if lane.place == place:
                    self._queue(key, lane, AGED)

    def _kind(self, lane: _Lane[V]) -> EditKind:
        """What a lane's pending edit changes."""
        if self._kind_of is None or lane.pending is None:
            return EditKind.STAGE
        return self._kind_of(lane.shown(), lane.pending)

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
        task = asyncio.create_task(
            self._send_one(key, lane, value, lane.pending_since), name=f"status-{key}"
        )
        lane.task = task
        self._sending.add(task)

    async def _send_one(self, key: K, lane: _Lane[V], value: V, since: float) -> None:
        """Send one value; afterwards queue the lane again if a newer value arrived meanwhile."""
        try:
            if self._budget is not None:
                await self._budget.sending()  # counted as it goes, not as it was let go
            await self._send(key, value)
            lane.last_sent = value
            if self.observer is not None:
                self.observer(key, value, self._clock() - since)
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
