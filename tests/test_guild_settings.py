"""Blocked patterns, setting values and the settings text: the edges found in review."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bot.owner.blocked_words import check_pattern as _check_pattern
from bot.owner.guild_settings import BY_THE_BOT, ChannelExists, GuildSettingsService
from bot.owner.setting_specs import MAX_BLOCKED_PATTERNS, MAX_CHANNELS, SETTINGS, InvalidSetting
from bot.storage.sqlite import SQLiteStore
from bot.texts.formatting import CONTENT_LIMIT, quote
from bot.texts.owner import settings_text
from tests.test_quotas import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def test_a_pattern_full_of_stars_cannot_stall_the_bot() -> None:
    # A backtracking regex took 17 s on 40 letters; this must be instant. Run apart, so a
    # regression fails by time-out instead of hanging the suite.
    code = (
        "from dataclasses import replace\n"
        "from bot.owner.blocked_words import check_pattern as _check_pattern\n"
        "from tests.test_quotas import DEFAULTS\n"
        "s = replace(DEFAULTS, blocked_patterns=(_check_pattern('a*a*a*a*a*a*a*a*a*a*z'),))\n"
        "assert not s.blocks('a' * 1000)\n"
        "assert s.blocks('a' * 500 + 'z')\n"
    )
    subprocess.run([sys.executable, "-c", code], timeout=20, check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("pattern", "prompt", "blocked"),
    [
        ("gore", "so much gore_ here", True),
        ("gore", "ｇｏｒｅ scene", True),
        ("gore", "gore2 scene", True),
        ("gore", "GORE", True),
        ("gore", "gorgeous sunset", False),
        ("gor*", "gorgeous sunset", True),
        ("*gore", "bloodgore", True),
        ("g*re", "gone", False),
        ("blood bath", "a blood  bath at dawn", True),
        ("blood bath", "blood and a bath", False),
        ("r34", "r34 please", True),
        ("gore", "go\u200bre", True),
    ],
)
def test_blocked_patterns_match_whole_words(pattern: str, prompt: str, blocked: bool) -> None:
    settings = replace(DEFAULTS, blocked_patterns=(_check_pattern(pattern),))
    assert settings.blocks(prompt) is blocked


@pytest.mark.parametrize("pattern", ["*", "***", "!!!", "  "])
def test_a_pattern_without_letters_is_refused(pattern: str) -> None:
    with pytest.raises(InvalidSetting):
        _check_pattern(pattern)


def test_a_tiny_gpu_budget_is_refused_not_turned_into_no_limit() -> None:
    parse = SETTINGS["daily_gpu_seconds"].parse
    with pytest.raises(InvalidSetting):
        parse("0.001")
    assert parse("0") == 0 and parse("0.0") == 0 and parse("12.345") == 12.35


def test_show_fits_a_message_with_every_list_full() -> None:
    settings = replace(
        DEFAULTS,
        channel_ids=tuple(800_000_000_000_000_000 + i for i in range(MAX_CHANNELS)),
        negative_prompt="x" * 500,
        blocked_patterns=tuple(f"{i:03d}" + "w" * 97 for i in range(MAX_BLOCKED_PATTERNS)),
    )
    text = settings_text(settings, ["channel_ids", "negative_prompt", "blocked_patterns"])
    assert len(text) <= CONTENT_LIMIT
    assert "more" in text
    done = f"Blocked {quote('w' * 100, 100)}."
    limit = CONTENT_LIMIT - len(done) - 2
    assert len(f"{done}\n\n{settings_text(settings, [], limit=limit)}") <= CONTENT_LIMIT


GONE, KEPT, ELSEWHERE = 801, 802, 803


def _refusal(channel: int, exists: ChannelExists | None = None) -> str | None:
    settings = replace(DEFAULTS, channel_ids=(GONE, KEPT))
    return settings.refusal(
        channel_ids=[channel],
        age_restricted=False,
        prompt="a fox",
        channel_exists=exists,
    )


def test_deleted_channels_on_the_list_do_not_count() -> None:
    # Unknown (the server is not loaded): every listed channel counts, as before.
    assert _refusal(ELSEWHERE) == (
        f"Animations can be made only in these channels of this server: <#{GONE}>, <#{KEPT}>."
    )
    # One of them is gone: it is neither required nor named.
    exists = {KEPT, ELSEWHERE}.__contains__
    assert _refusal(ELSEWHERE, exists) == (
        f"Animations can be made only in these channels of this server: <#{KEPT}>."
    )
    assert _refusal(KEPT, exists) is None
    assert _refusal(GONE, exists) is not None  # a channel of that id cannot be used anyway
    # Every listed channel is gone: the list counts as empty, so every channel is allowed.
    assert _refusal(ELSEWHERE, {ELSEWHERE}.__contains__) is None
    settings = replace(DEFAULTS, channel_ids=(GONE,))
    assert settings.listed_channels(lambda _c: False) == ()
    assert settings.allows_channel(ELSEWHERE, lambda _c: False)
    assert not settings.allows_channel(ELSEWHERE)


async def test_a_deleted_channel_leaves_the_stored_list(store: SQLiteStore) -> None:
    service = GuildSettingsService(store, DEFAULTS)
    await service.add_channel(1, GONE, by=42)
    await service.add_channel(1, KEPT, by=42)
    await service.add_channel(2, GONE, by=43)  # ids are unique, but each server is its own

    assert await service.forget_channel(1, GONE)
    assert service.get(1).channel_ids == (KEPT,)
    assert service.get(2).channel_ids == (GONE,)
    assert not await service.forget_channel(1, GONE)  # already gone: nothing to do
    assert not await service.forget_channel(3, GONE)  # a server that changed nothing
    # Stored, by nobody in particular, and read back as such after a restart.
    async with store._db.execute(  # pyright: ignore[reportPrivateUsage]
        "SELECT updated_by FROM guild_settings WHERE guild_id = 1 AND name = 'channel_ids'"
    ) as cursor:
        assert await cursor.fetchone() == (BY_THE_BOT,)
    reloaded = GuildSettingsService(store, DEFAULTS)
    await reloaded.load()
    assert reloaded.get(1).channel_ids == (KEPT,)

    # The last one gone: the list is reset, so every channel is allowed again.
    assert await service.forget_channel(1, KEPT)
    assert service.get(1).channel_ids == () and not service.is_changed(1, "channel_ids")
    await reloaded.load()
    assert not reloaded.is_changed(1, "channel_ids")


def test_show_marks_deleted_channels() -> None:
    settings = replace(DEFAULTS, channel_ids=(GONE, KEPT))
    text = settings_text(settings, ["channel_ids"], deleted_channels=[GONE])
    assert f"**Channels**: <#{GONE}> (deleted), <#{KEPT}> ✱\n" in text
    every = settings_text(settings, ["channel_ids"], deleted_channels=[GONE, KEPT])
    assert "none of them exists any more, so /animate works in every channel" in every
    full = replace(
        DEFAULTS,
        channel_ids=tuple(800_000_000_000_000_000 + i for i in range(MAX_CHANNELS)),
        negative_prompt="x" * 500,
        blocked_patterns=tuple(f"{i:03d}" + "w" * 97 for i in range(MAX_BLOCKED_PATTERNS)),
    )
    shown = settings_text(
        full,
        ["channel_ids", "negative_prompt", "blocked_patterns"],
        deleted_channels=full.channel_ids,
    )
    assert len(shown) <= CONTENT_LIMIT and "(deleted)" in shown
