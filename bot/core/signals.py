"""What can interrupt a job's wait: a Cancel press, a pushed prediction state, or a freed GPU."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]


class JobSignals:
    """Per-job wake-ups and cancel requests, and a sleep that either of them cuts short."""

    def __init__(self, sleep: Sleep = asyncio.sleep) -> None:
        self._sleep = sleep
        self._cancel_wanted: set[int] = set()
        self._wakeups: dict[int, asyncio.Event] = {}
        self._waiting_for_capacity: set[int] = set()

    def cancel_wanted(self, job_id: int) -> bool:
        """True if someone pressed Cancel on this job."""
        return job_id in self._cancel_wanted

    def want_cancel(self, job_id: int) -> None:
        """Record a Cancel press and wake the job, once."""
        if job_id not in self._cancel_wanted:
            self._cancel_wanted.add(job_id)
            self.wake(job_id)

    def wake(self, job_id: int) -> None:
        """Cut the job's current or next pause short."""
        self._event(job_id).set()

    def clear(self, job_id: int) -> None:
        """Take note of a wake-up, so the next pause sleeps again."""
        self._event(job_id).clear()

    def clear_unless_canceling(self, job_id: int) -> None:
        """Take note of a wake-up; a Cancel press keeps its wake-up for the job's loop."""
        if job_id not in self._cancel_wanted:
            self.clear(job_id)

    def wait(self, job_id: int) -> Awaitable[bool]:
        """Wait until the job is woken."""
        return self._event(job_id).wait()

    async def pause(self, seconds: float, job_id: int) -> bool:
        """Sleep, waking early if the job is canceled or pushed; return whether it woke early."""
        event = self._event(job_id)
        if event.is_set():
            return True
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        return event.is_set()

    async def pause_for_capacity(self, seconds: float, job_id: int) -> bool:
        """Pause like `pause`, waking early too when the backend may have room."""
        self._waiting_for_capacity.add(job_id)
        try:
            return await self.pause(seconds, job_id)
        finally:
            self._waiting_for_capacity.discard(job_id)

    def capacity_freed(self) -> None:
        """Wake every job waiting for the backend to have room (one of them may start)."""
        for job_id in list(self._waiting_for_capacity):
            self.wake(job_id)

    def forget(self, job_id: int) -> None:
        """Drop a finished job's signals."""
        self._cancel_wanted.discard(job_id)
        self._wakeups.pop(job_id, None)

    def _event(self, job_id: int) -> asyncio.Event:
        """The event that cuts a job's pause short."""
        return self._wakeups.setdefault(job_id, asyncio.Event())
