"""SHARD_COUNT and SHARD_IDS, the guild-to-shard formula, and the pacing of identifies."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bot.app.settings import SettingsError, load_settings
from bot.app.sharding import InProcessIdentifyGate, describe_shard_ids, shard_of
from tests.test_settings import run_bot


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("DISCORD_", "REPLICATE_", "DATABASE_", "SHARD_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DISCORD_TOKEN", "d")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r")
    monkeypatch.chdir(tmp_path)


def test_one_shard_unless_told_otherwise() -> None:
    settings = load_settings()
    assert settings.shard_count is None and settings.shard_ids == ()


@pytest.mark.parametrize(
    ("count", "ids", "expected"),
    [
        ("", "", (None, ())),
        ("2", "", (2, ())),
        (" AUTO ", "", ("auto", ())),
        ("4", "1, 3", (4, (1, 3))),
        ("2", "1,0", (2, (1, 0))),
        ("1", "0", (1, (0,))),
    ],
)
def test_shard_settings_are_read(
    monkeypatch: pytest.MonkeyPatch, count: str, ids: str, expected: tuple[object, object]
) -> None:
    monkeypatch.setenv("SHARD_COUNT", count)
    monkeypatch.setenv("SHARD_IDS", ids)
    settings = load_settings()
    assert (settings.shard_count, settings.shard_ids) == expected


@pytest.mark.parametrize(
    ("count", "ids", "message"),
    [
        ("2", "2", "SHARD_IDS is invalid: .*shard 2 is outside SHARD_COUNT=2 \\(0 to 1\\)"),
        ("3", "0,5", "SHARD_IDS is invalid: .*shard 5 is outside SHARD_COUNT=3"),
        ("", "0", "SHARD_IDS is invalid: .*needs SHARD_COUNT set to a number"),
        ("auto", "0,1", "SHARD_IDS is invalid: .*needs SHARD_COUNT set to a number"),
        ("2", "0,0", "SHARD_IDS is invalid: .*names a shard more than once"),
        ("2", "0;1", "SHARD_IDS is invalid: .*comma-separated shard numbers"),
        ("2", "-1", "SHARD_IDS is invalid: .*comma-separated shard numbers"),
        ("2", "0,,1", "SHARD_IDS is invalid: .*comma-separated shard numbers"),
        ("two", "", "SHARD_COUNT is invalid: .*a number of shards \\(1 or more\\), or auto"),
        ("0", "", "SHARD_COUNT is invalid"),
        ("-2", "", "SHARD_COUNT is invalid"),
        ("1.5", "0", "SHARD_COUNT is invalid"),
    ],
)
def test_bad_shard_settings_are_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, count: str, ids: str, message: str
) -> None:
    monkeypatch.setenv("SHARD_COUNT", count)
    monkeypatch.setenv("SHARD_IDS", ids)
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_a_shard_outside_the_count_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_bot(
        tmp_path, DISCORD_TOKEN="d", REPLICATE_API_TOKEN="r", SHARD_COUNT="2", SHARD_IDS="0,2"
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "animate-bot: SHARD_IDS is invalid: Value error, shard 2 is outside SHARD_COUNT=2 (0 to 1)"
    )


def test_a_guild_shard_is_its_id_shifted_by_22_modulo_the_count() -> None:
    # Discord's example: guild 81384788765712384 is on shard 7 of 17.
    assert shard_of(81384788765712384, 17) == 7
    assert shard_of(81384788765712384, 1) == 0
    assert {shard_of((n << 22) | 0x3FFFFF, 3) for n in range(6)} == {0, 1, 2}


def test_the_start_up_line_says_which_shards() -> None:
    assert describe_shard_ids((), 1) == "one shard"
    assert describe_shard_ids((), 4) == "all 4 shards"
    assert describe_shard_ids((1, 3), 4) == "shards 1, 3 of 4"
    assert describe_shard_ids((), None) == "the shard count Discord recommends"


class FakeClock:
    """Time that moves only when the gate sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        """Return the current fake time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the fake time instead of waiting."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def gate(clock: FakeClock, max_concurrency: int = 1) -> InProcessIdentifyGate:
    """A gate on the fake clock."""
    return InProcessIdentifyGate(
        max_concurrency=max_concurrency, clock=clock.time, sleep=clock.sleep
    )


async def test_a_single_shard_identifies_at_once() -> None:
    clock = FakeClock()
    await gate(clock).wait_turn(0)
    assert clock.sleeps == []


async def test_shards_of_one_bucket_identify_five_seconds_apart() -> None:
    clock = FakeClock()
    pacing = gate(clock, max_concurrency=1)
    started = []
    for shard in range(3):
        await pacing.wait_turn(shard)
        started.append(clock.now)
    assert started == [100.0, 105.0, 110.0]


async def test_shards_of_different_buckets_identify_together() -> None:
    clock = FakeClock()
    pacing = gate(clock, max_concurrency=1)
    pacing.learn_max_concurrency(16)
    for shard in range(16):
        await pacing.wait_turn(shard)
    assert clock.sleeps == []
    # Shard 16 shares shard 0's bucket: it waits for the next interval.
    await pacing.wait_turn(16)
    assert clock.sleeps == [5.0]


async def test_an_identify_after_the_interval_goes_at_once() -> None:
    clock = FakeClock()
    pacing = gate(clock)
    await pacing.wait_turn(0)
    clock.now += 7.5
    await pacing.wait_turn(0)
    clock.now += 2.0
    await pacing.wait_turn(0)
    assert clock.sleeps == [3.0]


async def test_concurrent_waiters_of_one_bucket_take_turns() -> None:
    clock = FakeClock()
    pacing = gate(clock, max_concurrency=2)
    order: list[tuple[int, float]] = []

    async def identify(shard: int) -> None:
        await pacing.wait_turn(shard)
        order.append((shard, clock.now))

    await asyncio.gather(identify(0), identify(2), identify(1), identify(4))
    assert [entry for entry in order if entry[0] % 2 == 0] == [(0, 100.0), (2, 105.0), (4, 110.0)]
    assert clock.sleeps == [5.0, 5.0], "shard 1 has a bucket of its own and never waits"
