"""The request budgets: one for the prediction API, one for Discord, shared by every job.

Each is an interface with an in-process implementation here. The methods that decide are
async so that an implementation shared by several processes (through the store) fits the
same interface.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

API_PER_MINUTE = 2400  # 80 % of the account's 3000 non-create requests a minute
CREATES_PER_MINUTE = 480  # 80 % of the account's 600 creates a minute
# Of the API budget, progress polls leave at least this share, and room for every running job
# to end within the minute (its aimed polls and download), so an ending request never waits.
ENDING_RESERVE = 0.1
ENDING_PER_JOB = 4
DISCORD_PER_SECOND = 40  # below Discord's 50 a second per bot, for the bot's other requests
# An edit that has waited this long goes out as if it changed the stage: shedding delays the
# lesser edits, it never starves them.
EDIT_PATIENCE = 10.0
# Progress ticks are paced to the room the last this many seconds left them.
PACE_WINDOW = 10.0


class ApiUse(StrEnum):
    """What an API request is for, which decides whether it may wait or be skipped."""

    ENDING = "ending"  # aimed polls, downloads, cancels, searches: never skipped
    PROGRESS = "progress"  # a poll sooner than the aimed one, for the progress bar
    CREATE = "create"  # the account's separate create limit


class EditKind(IntEnum):
    """What a status edit changes, in the order edits are shed when Discord's budget is short.

    Progress ticks go first, then estimates, then queue places; a change of stage last.
    """

    STAGE = 0
    POSITION = 1
    ETA = 2
    PROGRESS = 3


# Of Discord's budget, how much may be in use for an edit of each kind to go out now. What
# stays above the top share is for results, final messages and announcements, never delayed.
EDIT_SHARES = {
    EditKind.STAGE: 0.85,
    EditKind.POSITION: 0.75,
    EditKind.ETA: 0.65,
    EditKind.PROGRESS: 0.5,
}


def effective_kind(kind: EditKind, waited: float) -> EditKind:
    """The kind an edit counts as: one that has waited out the patience, as a stage change."""
    return EditKind.STAGE if waited >= EDIT_PATIENCE else kind


class SlidingWindow:
    """Counts events in the last `period` seconds."""

    def __init__(self, period: float, clock: Clock) -> None:
        self._period = period
        self._clock = clock
        self._times: deque[float] = deque()

    def count(self) -> int:
        """Events within the window now."""
        horizon = self._clock() - self._period
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        return len(self._times)

    def add(self) -> None:
        """Count one event now."""
        self._times.append(self._clock())

    def room_in(self, limit: int) -> float:
        """Seconds until fewer than `limit` events are in the window (0 if already so)."""
        count = self.count()
        if count < limit:
            return 0.0
        if limit <= 0:
            return self._period
        return max(0.0, self._times[count - limit] + self._period - self._clock())


class ApiBudget(Protocol):
    """The prediction API's requests a minute, shared by every job of the bot."""

    async def spend(self, use: ApiUse) -> None:
        """Wait, only if the budget is spent, for room for a request that must go; count it."""
        ...

    async def try_progress(self, running: int) -> bool:
        """Count a progress poll and return True if the budget has room left for it.

        `running`: the jobs being followed, each of which may end (and spend) within the minute.
        """
        ...

    def share_among(self, processes: int) -> None:
        """Keep to this process's share of a budget that `processes` processes spend."""
        ...

    def progress_interval(self, running: int, floor: float) -> float:
        """Seconds between one job's progress polls so that `running` jobs fit what is left."""
        ...


class LocalApiBudget:
    """An API budget for one process: a sliding minute of requests, creates apart."""

    def __init__(
        self,
        per_minute: int = API_PER_MINUTE,
        *,
        creates_per_minute: int = CREATES_PER_MINUTE,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.per_minute = per_minute
        self._creates_per_minute = creates_per_minute
        self._whole = (per_minute, creates_per_minute)  # of every process together
        self._sleep = sleep
        self._all = SlidingWindow(60.0, clock)
        self._ending = SlidingWindow(60.0, clock)
        self._creates = SlidingWindow(60.0, clock)
        self.spent: Counter[ApiUse] = Counter()
        self.waited = 0.0  # seconds requests that must go spent waiting for room

    async def spend(self, use: ApiUse) -> None:
        """Wait, only if the budget is spent, for room for a request that must go; count it."""
        window, limit = (
            (self._creates, self._creates_per_minute)
            if use is ApiUse.CREATE
            else (self._all, self.per_minute)
        )
        while (wait := window.room_in(limit)) > 0:
            self.waited += wait
            await self._sleep(wait)
        window.add()
        if use is ApiUse.ENDING:
            self._ending.add()
        self.spent[use] += 1

    def share_among(self, processes: int) -> None:
        """Keep to this process's share of a budget that `processes` processes spend."""
        whole, creates = self._whole
        self.per_minute = max(1, whole // max(1, processes))
        self._creates_per_minute = max(1, creates // max(1, processes))

    async def try_progress(self, running: int) -> bool:
        """Count a progress poll and return True if the budget has room left for it."""
        if self._all.count() >= self._progress_limit(running):
            return False
        self._all.add()
        self.spent[ApiUse.PROGRESS] += 1
        return True

    def progress_interval(self, running: int, floor: float) -> float:
        """Seconds between one job's progress polls so that `running` jobs fit what is left.

        What is left is the budget less its reserve and the ending requests of the last
        minute, which foretell the next minute's.
        """
        spare = self._progress_limit(running) - self._ending.count()
        if spare <= 0:
            return math.inf
        return max(floor, 60.0 * max(1, running) / spare)

    def _progress_limit(self, running: int) -> int:
        """How full the minute may be for a progress poll to go."""
        reserve = max(self.per_minute * ENDING_RESERVE, ENDING_PER_JOB * running)
        return math.floor(self.per_minute - reserve)


class DiscordBudget(Protocol):
    """Discord's requests a second, shared by every message the bot writes."""

    async def note(self) -> None:
        """Count a request that is never delayed (an acknowledgement, a result)."""
        ...

    async def try_edit(self, kind: EditKind, waited: float) -> bool:
        """Hold room for a status edit and return True if it may go now.

        `waited`: how long the edit has waited. The room is spent by `sending`, as it goes.
        """
        ...

    async def sending(self) -> None:
        """Spend the room held for an edit: it is being sent now."""
        ...

    def retry_in(self) -> float:
        """Seconds until a refused edit is worth asking for again."""
        ...

    def share_among(self, processes: int) -> None:
        """Keep to this process's share of a budget that `processes` processes spend."""
        ...

    def progress_interval(self, running: int) -> float:
        """Seconds between one job's progress edits so that `running` jobs fit their share."""
        ...


class LocalDiscordBudget:
    """A Discord budget for one process: a sliding second, with a share per kind of edit."""

    def __init__(self, per_second: int = DISCORD_PER_SECOND, *, clock: Clock = time.monotonic):
        self.per_second = per_second
        self._whole = per_second  # of every process together
        self._window = SlidingWindow(1.0, clock)
        self._notes = SlidingWindow(1.0, clock)  # the requests never delayed, of the last second
        # What goes before progress ticks, of the last PACE_WINDOW: results (counted twice,
        # as edits leave room for them twice) and changes of stage.
        self._ahead = SlidingWindow(PACE_WINDOW, clock)
        # Edits let go but not yet sent: counted, so a busy moment cannot bunch them together.
        self._held = 0
        self.sent: Counter[str] = Counter()  # "noted" and each EditKind's name
        self.refused: Counter[EditKind] = Counter()

    async def note(self) -> None:
        """Count a request that is never delayed (an acknowledgement, a result)."""
        self._window.add()
        self._notes.add()
        self._ahead.add()
        self._ahead.add()
        self.sent["noted"] += 1

    async def try_edit(self, kind: EditKind, waited: float) -> bool:
        """Hold room for a status edit and return True if it may go now."""
        # The last second's results foretell the next's: edits leave room for them twice.
        used = self._window.count() + self._notes.count() + self._held
        if used >= self._limit(effective_kind(kind, waited)):
            self.refused[kind] += 1
            return False
        self._held += 1
        self.sent[kind.name] += 1
        if kind is EditKind.STAGE:
            self._ahead.add()
        return True

    async def sending(self) -> None:
        """Spend the room held for an edit: it is being sent now."""
        self._held = max(0, self._held - 1)
        self._window.add()

    def share_among(self, processes: int) -> None:
        """Keep to this process's share of a budget that `processes` processes spend."""
        self.per_second = max(1, self._whole // max(1, processes))

    def retry_in(self) -> float:
        """Seconds until a refused edit is worth asking for again."""
        # At least a tenth of a second: thousands of waiting edits must not spin the loop.
        return max(0.1, self._window.room_in(self._limit(EditKind.PROGRESS)))

    def progress_interval(self, running: int) -> float:
        """Seconds between one job's progress edits so that `running` jobs fit their share.

        Their share, and no more than what results and changes of stage lately left of the
        room an edit that waited out the patience has: ticks are what is shed first.
        """
        jobs = max(1, running)
        share = self.per_second * EDIT_SHARES[EditKind.PROGRESS]
        left = self.per_second * EDIT_SHARES[EditKind.STAGE] - self._ahead.count() / PACE_WINDOW
        return max(jobs / share, jobs / max(1.0, left))

    def _limit(self, kind: EditKind) -> int:
        """How full the second may be for an edit of this kind to go."""
        return max(1, math.floor(self.per_second * EDIT_SHARES[kind]))


class DeferralCountingBudget:
    """A Discord budget that tells `on_deferred` the kind of each status edit it holds back."""

    def __init__(self, inner: DiscordBudget, on_deferred: Callable[[str], None]) -> None:
        self.inner = inner
        self._on_deferred = on_deferred

    async def note(self) -> None:
        """Count a request that is never delayed (an acknowledgement, a result)."""
        await self.inner.note()

    async def try_edit(self, kind: EditKind, waited: float) -> bool:
        """Hold room for a status edit and return True if it may go now; count a refusal."""
        allowed = await self.inner.try_edit(kind, waited)
        if not allowed:
            self._on_deferred(kind.name.lower())
        return allowed

    async def sending(self) -> None:
        """Spend the room held for an edit: it is being sent now."""
        await self.inner.sending()

    def share_among(self, processes: int) -> None:
        """Keep to this process's share of a budget that `processes` processes spend."""
        self.inner.share_among(processes)

    def retry_in(self) -> float:
        """Seconds until a refused edit is worth asking for again."""
        return self.inner.retry_in()

    def progress_interval(self, running: int) -> float:
        """Seconds between one job's progress edits so that `running` jobs fit their share."""
        return self.inner.progress_interval(running)


@dataclass(frozen=True, slots=True)
class Budgets:
    """The two budgets a scheduler spends from."""

    api: ApiBudget
    discord: DiscordBudget

    @classmethod
    def local(
        cls,
        *,
        api_per_minute: int = API_PER_MINUTE,
        discord_per_second: int = DISCORD_PER_SECOND,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> Budgets:
        """Budgets for one process (or, shared, its share: see `share_among`)."""
        return cls(
            LocalApiBudget(api_per_minute, clock=clock, sleep=sleep),
            LocalDiscordBudget(discord_per_second, clock=clock),
        )

    def share_among(self, processes: int) -> None:
        """Spend only this process's share of both budgets, `processes` processes spending."""
        self.api.share_among(processes)
        self.discord.share_among(processes)
