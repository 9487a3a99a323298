"""Who may queue what today: bans, daily requests per member, each server's GPU budget.

GPU seconds are priced per backend kind: Replicate's at PRICE_PER_GPU_SECOND, the bot's own
Cog servers' at COG_PRICE_PER_GPU_SECOND. The daily budget protects money, so it counts the
seconds that cost some: Replicate's always (it bills them whatever the estimate says), the own
GPUs' only when they are given a price above 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.core.limits import GuildLimits, QueueFull
from bot.owner.guild_settings import GuildSettingsService
from bot.storage.base import GpuSeconds, Store

DAY = 86_400.0
USAGE_DAYS = 30

Clock = Callable[[], float]


def day_start(now: float) -> float:
    """The start of the UTC day that contains `now` (unix seconds)."""
    return now - now % DAY


@dataclass(frozen=True, slots=True)
class Prices:
    """Dollars per GPU second on each kind of backend."""

    replicate: float
    own: float = 0.0

    def cost(self, gpu: GpuSeconds) -> float:
        """The estimated cost of some GPU seconds, in dollars."""
        return gpu.replicate * self.replicate + gpu.own * self.own

    @property
    def own_is_free(self) -> bool:
        """True when the own GPUs' seconds cost nothing, so the daily budget skips them."""
        return self.own == 0

    def budgeted(self, gpu: GpuSeconds) -> float:
        """The seconds a daily budget counts: those that cost money."""
        return gpu.replicate + (0.0 if self.own_is_free else gpu.own)


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One UTC day of a server's spending."""

    day_start: float
    predictions: int
    gpu: GpuSeconds

    @property
    def gpu_seconds(self) -> float:
        """GPU seconds on every backend."""
        return self.gpu.total


@dataclass(frozen=True, slots=True)
class MemberUsage:
    """One member's share of a server's spending."""

    member_id: int
    predictions: int
    gpu: GpuSeconds

    @property
    def gpu_seconds(self) -> float:
        """GPU seconds on every backend."""
        return self.gpu.total


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A server's spending over the last days, with the prices used to estimate its cost."""

    since: float
    days: tuple[DayUsage, ...]
    members: tuple[MemberUsage, ...]
    prices: Prices
    today: GpuSeconds
    daily_budget: float  # 0: no limit

    @property
    def predictions(self) -> int:
        """Predictions in the whole period."""
        return sum(day.predictions for day in self.days)

    @property
    def gpu(self) -> GpuSeconds:
        """GPU seconds in the whole period, per backend kind."""
        return sum((day.gpu for day in self.days), GpuSeconds())

    @property
    def gpu_seconds(self) -> float:
        """GPU seconds in the whole period, on every backend."""
        return self.gpu.total

    @property
    def today_gpu_seconds(self) -> float:
        """GPU seconds today, on every backend."""
        return self.today.total

    @property
    def today_budgeted(self) -> float:
        """Today's GPU seconds that count toward the daily budget."""
        return self.prices.budgeted(self.today)

    @property
    def uses_own_gpus(self) -> bool:
        """True when some of the period's work ran on the bot's own GPUs."""
        return self.gpu.own > 0 or self.today.own > 0


class Quotas:
    """The scheduler's per-server policy: limits from the settings, checks against the store."""

    def __init__(
        self,
        store: Store,
        settings: GuildSettingsService,
        *,
        prices: Prices,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._settings = settings
        self._prices = prices
        self._clock = clock

    def limits(self, guild_id: int) -> GuildLimits:
        """The server's limits on running and waiting work."""
        settings = self._settings.get(guild_id)
        return GuildLimits(
            running=settings.running_limit, queued_per_member=settings.queued_per_member
        )

    async def admit(self, guild_id: int, requester_id: int) -> None:
        """Raise QueueFull, with the reason, if the member may not queue anything more today."""
        if await self._store.is_banned(guild_id, requester_id):
            raise QueueFull("You are not allowed to use the animation bot in this server.")
        settings = self._settings.get(guild_id)
        today = day_start(self._clock())
        tomorrow = int(today + DAY)
        if settings.daily_gpu_seconds:
            used = self._prices.budgeted(await self._store.gpu_seconds_since(guild_id, today))
            if used >= settings.daily_gpu_seconds:
                raise QueueFull(
                    f"This server has used its {settings.daily_gpu_seconds:g} GPU seconds for "
                    "today, so nothing more can be queued until the budget resets "
                    f"<t:{tomorrow}:R> (midnight UTC)."
                )
        limit = settings.daily_requests_per_member
        if limit:
            made = await self._store.requests_since(guild_id, requester_id, today)
            if made >= limit:
                plural = "request" if limit == 1 else "requests"
                raise QueueFull(
                    f"You have used your {limit} {plural} for today in this server; more "
                    f"open <t:{tomorrow}:R> (midnight UTC)."
                )

    async def remaining_today(self, guild_id: int, requester_id: int) -> int | None:
        """How many more requests the member may make today here; None without a limit."""
        limit = self._settings.get(guild_id).daily_requests_per_member
        if not limit:
            return None
        made = await self._store.requests_since(guild_id, requester_id, day_start(self._clock()))
        return max(0, limit - made)

    async def usage(self, guild_id: int, days: int = USAGE_DAYS) -> UsageReport:
        """The server's spending per UTC day and per member, today included."""
        today = day_start(self._clock())
        since = today - (days - 1) * DAY
        by_day = await self._store.usage_by_day(guild_id, since)
        by_member = await self._store.usage_by_member(guild_id, since)
        return UsageReport(
            since=since,
            days=tuple(DayUsage(day * DAY, count, gpu) for day, count, gpu in by_day),
            members=tuple(MemberUsage(member, count, gpu) for member, count, gpu in by_member),
            prices=self._prices,
            today=await self._store.gpu_seconds_since(guild_id, today),
            daily_budget=self._settings.get(guild_id).daily_gpu_seconds,
        )
