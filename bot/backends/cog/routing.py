"""Own GPUs first, Replicate as the overflow: one Backend over a Cog pool and the API.

A job goes to a free Cog server; when none is free and its expected wait for one exceeds
OVERFLOW_AFTER_SECONDS, it goes to Replicate instead (paid, and now). Every later call for a
prediction goes to the backend that made it, told apart by the id (`cog:` for the pool).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from bot.backends.base import Backend, BackendFeatures, Prediction
from bot.backends.cog.ids import parse
from bot.backends.cog.pool import CogPool


class RoutingBackend:
    """Sends each prediction to the pool, or past a wait to the overflow backend."""

    def __init__(self, pool: CogPool, overflow: Backend, *, overflow_after: float | None) -> None:
        self.pool = pool
        self.overflow = overflow
        self._overflow_after = overflow_after

    @property
    def features(self) -> BackendFeatures:
        """Both can be read and searched; pushes only if both push."""
        pushes = self.pool.features.pushes and self.overflow.features.pushes
        return BackendFeatures(polling=True, pushes=pushes, search=True)

    def has_capacity(self, starting: int) -> bool:
        """A free GPU, or a wait long enough to send the job to the overflow."""
        return self.pool.has_capacity(starting) or self._overflows(starting)

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
        """Start on a free GPU, or on the overflow when the wait for one is too long."""
        if not self.pool.has_free_server() and self._overflows(0):
            return await self.overflow.create(api_input, wait=wait)
        return await self.pool.create(api_input, wait=wait)

    async def get(self, prediction_id: str) -> Prediction:
        """Read it where it runs."""
        return await self._owner(prediction_id).get(prediction_id)

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
    ) -> Prediction | None:
        """Look on the GPUs, then (if overflow is on) in the API's list."""
        found = await self.pool.find(api_input, created_after=created_after, accept=accept)
        if found is not None or self._overflow_after is None:
            return found
        return await self.overflow.find(api_input, created_after=created_after, accept=accept)

    async def cancel(self, prediction_id: str) -> Prediction:
        """Cancel it where it runs."""
        return await self._owner(prediction_id).cancel(prediction_id)

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        """Outputs of the pool are `data:` URIs or its uploads; anything else is the API's."""
        if url.startswith("data:") or self.pool.received(url):
            return await self.pool.download_to(url, dest, max_bytes=max_bytes)
        return await self.overflow.download_to(url, dest, max_bytes=max_bytes)

    def _overflows(self, starting: int) -> bool:
        """True if the job after `starting` others would wait too long for a GPU."""
        if self._overflow_after is None:
            return False
        return self.pool.expected_wait(starting) > self._overflow_after

    def _owner(self, prediction_id: str) -> Backend:
        """The backend that made a prediction."""
        return self.pool if parse(prediction_id) is not None else self.overflow
