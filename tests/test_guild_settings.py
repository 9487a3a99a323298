"""Blocked patterns, setting values and the settings text: the edges found in review."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bot.guild_settings import (
    MAX_BLOCKED_PATTERNS,
    MAX_CHANNELS,
    SETTINGS,
    InvalidSetting,
    _check_pattern,
)
from bot.owner_texts import settings_text
from bot.texts import CONTENT_LIMIT, quote
from tests.test_quotas import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def test_a_pattern_full_of_stars_cannot_stall_the_bot() -> None:
    # A backtracking regex took 17 s on 40 letters; this must be instant. Run apart, so a
    # regression fails by time-out instead of hanging the suite.
    code = (
        "from dataclasses import replace\n"
        "from bot.guild_settings import _check_pattern\n"
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
