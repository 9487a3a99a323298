"""Coalescing, throttled delivery of status updates, so slow edits never hold up the work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class _Lane(Generic[V]):
    """The state of one key: the newest unsent value and the task sending values."""

    pending: V | None = None
    last_sent: V | None = None
    last_sent_at: float = float("-inf")
    task: asyncio.Task[None] | None = None
    closed: bool = False
    sending: bool = False


class StatusRelay(Generic[K, V]):
    """Send the latest value per key, at most one send in flight and one per `interval`."""

    def __init__(
        self,
        send: Callable[[K, V], Awaitable[None]],
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._lanes: dict[K, _Lane[V]] = {}
        self._closed = False

    def publish(self, key: K, value: V) -> None:
        """Queue a value for a key; an unsent older value is replaced, a repeat is dropped."""
        if self._closed:
            return
        lane = self._lanes.setdefault(key, _Lane())
        if lane.closed or (value == lane.last_sent and lane.pending is None):
            return
        lane.pending = value
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._drain(key, lane), name=f"status-{key}")

    def prime(self, key: K, value: V) -> None:
        """Record a value as already shown (sent by other means), so it is not sent again."""
        if not self._closed:
            self._lanes.setdefault(key, _Lane()).last_sent = value

    async def settle(self, key: K) -> None:
        """Drop unsent values for a key and wait for a send in flight, before a final message."""
        lane = self._lanes.pop(key, None)
        if lane is None:
            return
        lane.closed = True
        lane.pending = None
        task = lane.task
        if task is None or task.done():
            return
        if not lane.sending:
            task.cancel()  # only waiting out the interval: nothing half-sent
        await asyncio.wait({task})

    async def close(self) -> None:
        """Stop every lane and accept nothing more."""
        self._closed = True
        for key in list(self._lanes):
            await self.settle(key)

    async def _drain(self, key: K, lane: _Lane[V]) -> None:
        """Send the newest value until none is left, spacing sends by the interval."""
        while lane.pending is not None and not lane.closed:
            wait = lane.last_sent_at + self._interval - self._clock()
            if wait > 0:
                await self._sleep(wait)
                continue
            value, lane.pending = lane.pending, None
            lane.last_sent_at = self._clock()
            lane.sending = True
            try:
                await self._send(key, value)
                lane.last_sent = value
            except asyncio.CancelledError:
                raise
            except Exception:
                # A status edit is a courtesy: its failure must never touch the job.
                log.warning("status update for %s failed", key, exc_info=True)
            finally:
                lane.sending = False
