"""Blocked words and patterns: how they are normalised, checked and matched against prompts.

Pure functions: the server's settings hold the patterns, these say what they block.
"""

from __future__ import annotations

import re
import unicodedata

from bot.core.jobs import INVISIBLE
from bot.owner.setting_specs import InvalidSetting

MAX_PATTERN_LENGTH = 100


def normalise(text: str) -> str:
    """A pattern as stored: NFKC, no invisible characters, one case, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", INVISIBLE.sub("", text)).casefold().split())


# Words are runs of letters or runs of digits: `gore_`, `gore2` and `ｇｏｒｅ` all hold `gore`.
_TOKEN = re.compile(r"(?:[^\W\d_]|\*)+|\d+")


def tokens(text: str) -> list[str]:
    """Text as blocked patterns see it: NFKC, no invisible characters, one case, words."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", INVISIBLE.sub("", text)).casefold())


def matches(pattern: list[str], words: list[str]) -> bool:
    """True if the pattern's words match a run of consecutive words of the prompt."""
    if not pattern:
        return False
    span = len(pattern)
    return any(
        all(
            _glob(part, word)
            for part, word in zip(pattern, words[start : start + span], strict=True)
        )
        for start in range(len(words) - span + 1)
    )


def _glob(pattern: str, word: str) -> bool:
    """Match one word against a pattern whose only wildcard is `*` (any letters).

    Two pointers and one remembered star: at most len(pattern) x len(word) steps, so no
    pattern an owner writes can stall the bot the way a backtracking regex could.
    """
    p = w = 0
    star, resume = -1, 0
    while w < len(word):
        if p < len(pattern) and pattern[p] == word[w]:
            p, w = p + 1, w + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume, p = p, w, p + 1
        elif star >= 0:
            resume += 1
            p, w = star + 1, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def check_pattern(pattern: str) -> str:
    """Validate a blocked pattern and return it as stored."""
    value = normalise(pattern)
    if not any(token.strip("*") for token in tokens(value)):
        raise InvalidSetting("A blocked pattern needs at least one letter or digit besides `*`.")
    if len(value) > MAX_PATTERN_LENGTH:
        raise InvalidSetting(f"A blocked pattern must be at most {MAX_PATTERN_LENGTH} characters.")
    return value
