"""Shards: which shard serves a guild, and the pacing of IDENTIFYs (no discord import here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

# Discord lets each rate-limit bucket (shard_id % max_concurrency) start one session per 5 s.
IDENTIFY_INTERVAL_SECONDS = 5.0


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard whose gateway connection receives this guild's events (DMs go to shard 0)."""
    return (guild_id >> 22) % shard_count


def describe_shard_ids(shard_ids: tuple[int, ...] | None, shard_count: int | None) -> str:
    """Say which shards a process runs, for its start-up log line."""
    if shard_count is None:
        return "the shard count Discord recommends"
    if not shard_ids:
        return f"all {shard_count} shards" if shard_count > 1 else "one shard"
    return f"shards {', '.join(map(str, shard_ids))} of {shard_count}"


class IdentifyGate(Protocol):
    """Decides when a shard may send its IDENTIFY; every identify of a bot goes through it.

    `InProcessIdentifyGate` paces one process; `SharedIdentifyGate` every process that shares
    a PostgreSQL store (and so, one bot token).
    """

    def learn_max_concurrency(self, max_concurrency: int) -> None:
        """Take `session_start_limit.max_concurrency` from `GET /gateway/bot`."""
        ...

    async def wait_turn(self, shard_id: int) -> None:
        """Return once `shard_id` may identify now; that identify then counts against its bucket."""
        ...


class InProcessIdentifyGate:
    """Paces the identifies of the shards of this one process, bucket by bucket.

    A bucket is `shard_id % max_concurrency`; each may identify once per 5 seconds. The first
    identify of every bucket goes at once, so a single shard starts without any wait. It knows
    nothing of other processes: several processes on one token use `SharedIdentifyGate`.
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 1,
        interval: float = IDENTIFY_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self._next_allowed: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def learn_max_concurrency(self, max_concurrency: int) -> None:
        """Take `session_start_limit.max_concurrency` from `GET /gateway/bot`."""
        self.max_concurrency = max(1, max_concurrency)

    def bucket(self, shard_id: int) -> int:
        """The rate-limit key of a shard."""
        return shard_id % self.max_concurrency

    async def wait_turn(self, shard_id: int) -> None:
        """Wait until the shard's bucket is free, then claim it for the next interval."""
        key = self.bucket(shard_id)
        # One waiter per bucket at a time, so two shards of a bucket never go in one interval.
        async with self._locks.setdefault(key, asyncio.Lock()):
            delay = self._next_allowed.get(key, float("-inf")) - self._clock()
            if delay > 0:
                await self._sleep(delay)
            self._next_allowed[key] = self._clock() + self._interval


class IdentifySlots(Protocol):
    """Identify slots booked in a store every process of one bot token shares."""

    async def reserve_identify(self, bucket: int, interval: float) -> float:
        """Book the bucket's next slot; return the seconds to wait until it."""
        ...


class SharedIdentifyGate:
    """Paces the identifies of every process on one token, through the shared store.

    Each identify books the next free slot of its bucket in the database (one per bucket
    per 5 s, counted in the database's clock), then waits for it: no lock is held while
    waiting, and a process that dies holds nothing.
    """

    def __init__(
        self,
        slots: IdentifySlots,
        *,
        interval: float = IDENTIFY_INTERVAL_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.max_concurrency = 1
        self._slots = slots
        self._interval = interval
        self._sleep = sleep

    def learn_max_concurrency(self, max_concurrency: int) -> None:
        """Take `session_start_limit.max_concurrency` from `GET /gateway/bot`."""
        self.max_concurrency = max(1, max_concurrency)

    async def wait_turn(self, shard_id: int) -> None:
        """Book the shard's bucket's next slot in the store and wait for it."""
        wait = await self._slots.reserve_identify(shard_id % self.max_concurrency, self._interval)
        if wait > 0:
            await self._sleep(wait)
