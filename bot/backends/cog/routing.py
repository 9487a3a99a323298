"""Own GPUs first, Replicate as the overflow: one Backend over a Cog pool and the API.

A job goes to a free Cog server; when none is free and its expected wait for one exceeds
OVERFLOW_AFTER_SECONDS, it goes to Replicate instead (paid, and now). The wait is measured
behind the jobs already waiting for a GPU (their creates answered AtCapacity), the same way
when the scheduler asks whether to start a job and when that job's create decides. Every
later call for a prediction goes to the backend that made it, told apart by the id (`cog:`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from bot.backends.base import AtCapacity, Backend, BackendFeatures, Prediction, current_attempt
from bot.backends.cog.ids import parse
from bot.backends.cog.pool import CogPool

# A job waiting for a GPU asks again every few seconds at most (runner.py): one that has not
# asked for this long has stopped waiting (canceled, failed), and no longer counts ahead.
WAITER_FORGOTTEN_AFTER = 30.0


class RoutingBackend:
    """Sends each prediction to the pool, or past a wait to the overflow backend."""

    def __init__(
        self,
        pool: CogPool,
        overflow: Backend,
        *,
        overflow_after: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.overflow = overflow
        self._overflow_after = overflow_after
        self._clock = clock
        self._waiting: OrderedDict[str, float] = OrderedDict()  # attempt -> its last ask

    @property
    def features(self) -> BackendFeatures:
        """Both can be read and searched; pushes only if both push."""
        pushes = self.pool.features.pushes and self.overflow.features.pushes
        return BackendFeatures(polling=True, pushes=pushes, search=True)

    def unmetered(self, reference: str | None) -> bool:
        """True if the request goes to a GPU: a create that would not overflow, or the pool's."""
        if reference is None:
            attempt = current_attempt.get()
            return not self._goes_to_overflow(attempt.key if attempt is not None else None)
        if reference == "":
            return self._overflow_after is None  # a search reads the API's list first
        return self._owns(reference)

    def has_capacity(self, starting: int) -> bool:
        """A free GPU, or a wait (behind the jobs waiting for one) long enough to overflow."""
        return self.pool.has_capacity(starting) or self._overflows(self._ahead(None))

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
        """Start on a free GPU, or on the overflow when the wait for one is too long."""
        attempt = current_attempt.get()
        key = attempt.key if attempt is not None else None
        if self._goes_to_overflow(key):
            self._stop_waiting(key)
            return await self.overflow.create(api_input, wait=wait)
        try:
            created = await self.pool.create(api_input, wait=wait)
        except AtCapacity:
            if key is not None:
                self._waiting[key] = self._clock()  # keeps its place if it waited already
            raise
        except BaseException:
            self._stop_waiting(key)
            raise
        self._stop_waiting(key)
        return created

    async def get(self, prediction_id: str) -> Prediction:
        """Read it where it runs."""
        return await self._owner(prediction_id).get(prediction_id)

    async def get_once(self, prediction_id: str, *, timeout: float) -> Prediction:
        """Read it once where it runs."""
        return await self._owner(prediction_id).get_once(prediction_id, timeout=timeout)

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
    ) -> Prediction | None:
        """Look in the API's list (if overflow is on: it only reads), then on the GPUs."""
        if self._overflow_after is not None:
            found = await self.overflow.find(api_input, created_after=created_after, accept=accept)
            if found is not None:
                return found
        return await self.pool.find(api_input, created_after=created_after, accept=accept)

    async def cancel(self, prediction_id: str) -> Prediction:
        """Cancel it where it runs."""
        return await self._owner(prediction_id).cancel(prediction_id)

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        """Outputs of the pool are `data:` URIs or its uploads; anything else is the API's."""
        if self._owns(url):
            return await self.pool.download_to(url, dest, max_bytes=max_bytes)
        return await self.overflow.download_to(url, dest, max_bytes=max_bytes)

    def _overflows(self, waiting_ahead: int) -> bool:
        """True if the job after `waiting_ahead` others would wait too long for a GPU."""
        if self._overflow_after is None:
            return False
        return self.pool.expected_wait(waiting_ahead) > self._overflow_after

    def _goes_to_overflow(self, key: str | None) -> bool:
        """True if this attempt's create, sent now, would go to the overflow."""
        return not self.pool.has_free_server() and self._overflows(self._ahead(key))

    def _owns(self, reference: str) -> bool:
        """True if a prediction id or output URL is the pool's."""
        return (
            parse(reference) is not None
            or reference.startswith("data:")
            or self.pool.received(reference)
        )

    def _ahead(self, key: str | None) -> int:
        """How many jobs wait for a GPU before this attempt (all of them for a new one)."""
        stale = self._clock() - WAITER_FORGOTTEN_AFTER
        for gone in [k for k, asked in self._waiting.items() if asked < stale]:
            del self._waiting[gone]
        keys = list(self._waiting)
        return keys.index(key) if key in self._waiting else len(keys)

    def _stop_waiting(self, key: str | None) -> None:
        """An attempt no longer waits for a GPU."""
        if key is not None:
            self._waiting.pop(key, None)

    def _owner(self, prediction_id: str) -> Backend:
        """The backend that made a prediction."""
        return self.pool if parse(prediction_id) is not None else self.overflow
