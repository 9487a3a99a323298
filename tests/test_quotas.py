"""Quotas, the GPU budget and usage against a real SQLite file, with a controlled clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.backends.cog import ids
from bot.backends.replicate import PredictionClient
from bot.core.jobs import GenerationRequest
from bot.core.limits import GuildLimits, QueueFull, SchedulerLimits
from bot.core.scheduler import Scheduler
from bot.owner.guild_settings import GuildSettings, GuildSettingsService
from bot.owner.quotas import DAY, Prices, Quotas
from bot.owner.setting_specs import InvalidSetting
from bot.storage.base import GpuSeconds
from bot.storage.job_rows import COG_PREFIX
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.scheduling import RecordingReporter, short_sleep, submit

START = 1_700_000_000.0 - 1_700_000_000.0 % DAY + 3_600  # 01:00 UTC on some day
GUILD, OTHER_GUILD, MEMBER, OTHER_MEMBER = 1, 2, 10, 11


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


DEFAULTS = GuildSettings(
    channel_ids=(),
    model="toonyou_beta3.safetensors",
    motion_module="mm_sd_v15_v2",
    steps=25,
    guidance_scale=7.5,
    running_limit=1,
    queued_per_member=3,
    daily_requests_per_member=0,
    daily_gpu_seconds=0,
    negative_prompt="",
    blocked_patterns=(),
    spoilers=False,
    age_restricted_only=False,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def world(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[SQLiteStore, Quotas]]:
    store = await SQLiteStore.open(tmp_path / "bot.sqlite3", clock=clock)
    settings = GuildSettingsService(store, DEFAULTS)
    await settings.load()
    try:
        yield store, Quotas(store, settings, prices=Prices(replicate=0.001), clock=clock)
    finally:
        await store.close()


async def _spend(
    store: SQLiteStore,
    seconds: float,
    *,
    guild: int = GUILD,
    user: int = MEMBER,
    on: str | None = None,
) -> int:
    """Record a request that ran for `seconds` on the GPU: on Cog server `on`, or Replicate."""
    job = await store.add_job(
        guild_id=guild,
        channel_id=100,
        requester_id=user,
        request=GenerationRequest.create("a fox", seed=1),
    )
    await store.mark_submitted(job.id)
    prediction_id = f"p{job.id}" if on is None else f"cog:{on}:job-{job.id}-r0"
    await store.mark_running(job.id, prediction_id)
    await store.mark_delivering(job.id, predict_time=seconds)
    await store.mark_done(job.id, result_message_id=job.id)
    return job.id


def _settings(quotas: Quotas) -> GuildSettingsService:
    return quotas._settings  # pyright: ignore[reportPrivateUsage]


async def test_the_gpu_budget_closes_the_day_and_opens_the_next(
    world: tuple[SQLiteStore, Quotas], clock: Clock
) -> None:
    store, quotas = world
    await _settings(quotas).set(GUILD, "daily_gpu_seconds", "100", by=MEMBER)
    await _spend(store, 60)
    await quotas.admit(GUILD, MEMBER)  # 60 of 100
    await _spend(store, 40, user=OTHER_MEMBER)
    with pytest.raises(QueueFull, match="used its 100 GPU seconds for today"):
        await quotas.admit(GUILD, MEMBER)
    await quotas.admit(OTHER_GUILD, MEMBER)  # another server's budget is its own
    clock.now += DAY - 3_601  # 23:59:59 UTC: still today
    with pytest.raises(QueueFull):
        await quotas.admit(GUILD, MEMBER)
    clock.now += 1  # midnight UTC
    await quotas.admit(GUILD, MEMBER)


async def test_rerun_gpu_time_counts_toward_the_budget(world: tuple[SQLiteStore, Quotas]) -> None:
    store, quotas = world
    await _settings(quotas).set(GUILD, "daily_gpu_seconds", "50", by=MEMBER)
    job = await store.add_job(
        guild_id=GUILD,
        channel_id=100,
        requester_id=MEMBER,
        request=GenerationRequest.create("a fox", seed=1),
    )
    await store.mark_submitted(job.id)
    await store.mark_running(job.id, "first")
    await store.mark_delivering(job.id, predict_time=30)
    await store.mark_rerun(job.id)  # the output expired: made again, paid again
    await store.mark_running(job.id, "second")
    await store.mark_delivering(job.id, predict_time=25)
    assert await store.gpu_seconds_since(GUILD, 0) == GpuSeconds(55)
    with pytest.raises(QueueFull):
        await quotas.admit(GUILD, MEMBER)


async def test_daily_requests_per_member_and_what_remains(
    world: tuple[SQLiteStore, Quotas], clock: Clock
) -> None:
    store, quotas = world
    assert await quotas.remaining_today(GUILD, MEMBER) is None  # no limit: nothing to say
    await _settings(quotas).set(GUILD, "daily_requests_per_member", "2", by=MEMBER)
    await _spend(store, 1)
    assert await quotas.remaining_today(GUILD, MEMBER) == 1
    # A request canceled before it was sent costs nothing and is not counted.
    queued = await store.add_job(
        guild_id=GUILD,
        channel_id=100,
        requester_id=MEMBER,
        request=GenerationRequest.create("a fox", seed=1),
    )
    await store.mark_canceled(queued.id)
    assert await quotas.remaining_today(GUILD, MEMBER) == 1
    await _spend(store, 1)
    assert await quotas.remaining_today(GUILD, MEMBER) == 0
    with pytest.raises(QueueFull, match="used your 2 requests for today"):
        await quotas.admit(GUILD, MEMBER)
    await quotas.admit(GUILD, OTHER_MEMBER)
    clock.now += DAY
    assert await quotas.remaining_today(GUILD, MEMBER) == 2
    await quotas.admit(GUILD, MEMBER)


async def test_bans_are_per_server(world: tuple[SQLiteStore, Quotas]) -> None:
    store, quotas = world
    assert await store.ban(GUILD, MEMBER, banned_by=OTHER_MEMBER)
    assert not await store.ban(GUILD, MEMBER, banned_by=OTHER_MEMBER)
    with pytest.raises(QueueFull, match="not allowed to use the animation bot"):
        await quotas.admit(GUILD, MEMBER)
    await quotas.admit(OTHER_GUILD, MEMBER)
    assert await store.unban(GUILD, MEMBER)
    assert not await store.unban(GUILD, MEMBER)
    await quotas.admit(GUILD, MEMBER)


async def test_usage_per_utc_day_and_member_over_thirty_days(
    world: tuple[SQLiteStore, Quotas], clock: Clock
) -> None:
    store, quotas = world
    clock.now = START - 31 * DAY
    await _spend(store, 1000)  # too old to show
    clock.now = START - 2 * DAY
    await _spend(store, 10)
    await _spend(store, 20, user=OTHER_MEMBER)
    clock.now = START
    await _spend(store, 5)
    await _spend(store, 7, guild=OTHER_GUILD)
    report = await quotas.usage(GUILD)
    assert [(d.day_start, d.predictions, d.gpu_seconds) for d in report.days] == [
        (START - 3_600 - 2 * DAY, 2, 30.0),
        (START - 3_600, 1, 5.0),
    ]
    assert [(m.member_id, m.predictions, m.gpu_seconds) for m in report.members] == [
        (OTHER_MEMBER, 1, 20.0),
        (MEMBER, 2, 15.0),
    ]
    assert report.today_gpu_seconds == 5 and report.gpu_seconds == 35
    assert not report.uses_own_gpus


async def test_the_budget_counts_paid_seconds_and_leaves_free_own_gpus_out(
    world: tuple[SQLiteStore, Quotas],
) -> None:
    store, quotas = world  # own GPUs at the default price: free
    await _settings(quotas).set(GUILD, "daily_gpu_seconds", "100", by=MEMBER)
    await _spend(store, 500, on="gpu-a")
    await quotas.admit(GUILD, MEMBER)  # 500 s on own GPUs cost nothing: 0 of 100
    await _spend(store, 60)
    await quotas.admit(GUILD, MEMBER)  # 60 of 100 paid
    await _spend(store, 40, on="gpu-b")
    await quotas.admit(GUILD, MEMBER)
    await _spend(store, 40)
    with pytest.raises(QueueFull, match="used its 100 GPU seconds for today"):
        await quotas.admit(GUILD, MEMBER)
    report = await quotas.usage(GUILD)
    assert report.today == GpuSeconds(replicate=100, own=540)
    assert report.today_budgeted == 100 and report.uses_own_gpus


async def test_own_gpus_with_a_price_count_toward_the_budget(tmp_path: Path, clock: Clock) -> None:
    store = await SQLiteStore.open(tmp_path / "bot.sqlite3", clock=clock)
    try:
        settings = GuildSettingsService(store, DEFAULTS)
        await settings.load()
        quotas = Quotas(store, settings, prices=Prices(replicate=0.001, own=0.0002), clock=clock)
        await settings.set(GUILD, "daily_gpu_seconds", "100", by=MEMBER)
        await _spend(store, 70, on="gpu-a")
        await quotas.admit(GUILD, MEMBER)  # 70 of 100
        await _spend(store, 30)
        with pytest.raises(QueueFull, match="used its 100 GPU seconds for today"):
            await quotas.admit(GUILD, MEMBER)
        report = await quotas.usage(GUILD)
        assert report.today_budgeted == 100
        assert report.prices.cost(report.gpu) == pytest.approx(30 * 0.001 + 70 * 0.0002)
    finally:
        await store.close()


async def test_usage_per_day_and_member_is_split_by_backend_kind(
    world: tuple[SQLiteStore, Quotas], clock: Clock
) -> None:
    store, quotas = world
    clock.now = START - DAY
    await _spend(store, 10)
    await _spend(store, 90, on="gpu-a", user=OTHER_MEMBER)
    clock.now = START
    await _spend(store, 5, on="gpu-a")
    report = await quotas.usage(GUILD)
    assert [(d.predictions, d.gpu) for d in report.days] == [
        (2, GpuSeconds(10, 90)),
        (1, GpuSeconds(0, 5)),
    ]
    assert [(m.member_id, m.gpu) for m in report.members] == [
        (OTHER_MEMBER, GpuSeconds(0, 90)),
        (MEMBER, GpuSeconds(10, 5)),
    ]
    assert report.gpu == GpuSeconds(10, 95) and report.today == GpuSeconds(0, 5)
    assert report.prices.cost(report.gpu) == pytest.approx(0.01)  # own GPUs are free


def test_the_stores_know_cog_prediction_ids_by_the_backends_prefix() -> None:
    assert COG_PREFIX == ids.PREFIX
    assert str(ids.CogPredictionId("gpu-a", "job-1-r0")).startswith(COG_PREFIX)


async def test_settings_are_stored_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await SQLiteStore.open(path)
    service = GuildSettingsService(store, DEFAULTS)
    await service.set(GUILD, "steps", "9", by=MEMBER)
    await service.set(GUILD, "spoilers", "on", by=MEMBER)
    await service.block(GUILD, "Gor*", by=MEMBER)
    await service.add_channel(GUILD, 555, by=MEMBER)
    with pytest.raises(InvalidSetting, match="already blocked"):
        await service.block(GUILD, "gor*", by=MEMBER)
    await store.close()

    store = await SQLiteStore.open(path)
    try:
        service = GuildSettingsService(store, DEFAULTS)
        await service.load()
        settings = service.get(GUILD)
        assert settings.steps == 9 and settings.spoilers and settings.channel_ids == (555,)
        assert settings.blocks("GORE!") and settings.blocks("so go\u200bry")
        assert not settings.blocks("a gecko") and not settings.blocks("ergo rex")
        assert service.get(OTHER_GUILD) == DEFAULTS
        await service.reset(GUILD, "steps")
        assert service.get(GUILD).steps == 25
    finally:
        await store.close()


class Policy:
    """A server policy as the bot's Quotas gives it: guild 1 runs two at once, one each waits."""

    def __init__(self) -> None:
        self.running = {1: 2}
        self.refuse: set[int] = set()

    def limits(self, guild_id: int) -> GuildLimits:
        return GuildLimits(running=self.running.get(guild_id, 1), queued_per_member=1)

    async def admit(self, guild_id: int, requester_id: int) -> None:
        if requester_id in self.refuse:
            raise QueueFull("You are not allowed to use the animation bot in this server.")


async def test_the_scheduler_obeys_each_servers_limits_and_admission(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    hold = asyncio.Event()
    prediction_api.behaviour_for = lambda _input: Behaviour(hold=hold)
    policy = Policy()
    scheduler = Scheduler(
        store,
        client,
        limits=SchedulerLimits(status_interval=0, running_total=10),
        sleep=short_sleep,
        policy=policy,
    )
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        for n, guild in enumerate((1, 1, 1, 2, 2)):
            await submit(scheduler, guild=guild, user=10 + n, prompt=f"job {n}")
        with pytest.raises(QueueFull, match="already have 1 request waiting"):
            await submit(scheduler, guild=1, user=10, prompt="a second one")
        policy.refuse.add(99)
        with pytest.raises(QueueFull, match="not allowed"):
            await submit(scheduler, guild=2, user=99)
        await prediction_api.wait_for(lambda: prediction_api.creates == 3)
        assert [e.position for e in scheduler.snapshot(1)] == [None, None, 1]
        assert [e.position for e in scheduler.snapshot(2)] == [None, 1]
        # The owner raises guild 2's limit: its waiting request starts at once.
        policy.running[2] = 2
        scheduler.limits_changed(2)
        await prediction_api.wait_for(lambda: prediction_api.creates == 4)
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 5)
    finally:
        await scheduler.stop()
