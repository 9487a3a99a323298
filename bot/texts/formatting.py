"""How member text and the bot's own words are made safe and short for Discord."""

from __future__ import annotations

import re

from bot.core.jobs import INVISIBLE

# Discord's message and embed limits.
CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024
FIELD_NAME_LIMIT = 256
FOOTER_LIMIT = 2048
EMBED_TOTAL_LIMIT = 6000

FIELDS_LIMIT = 25
REASON_LIMIT = 1500

# Markdown, plus `<` and `@` so mentions, emoji and timestamps show as the text typed.
_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]()<@+-])")
# "1. text" at the start of a line would become a numbered list.
_LEADING_LIST = re.compile(r"^(\d+)\.")


def shorten(text: str, limit: int) -> str:
    """Cut text to a limit, visibly, with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)].rstrip() + "…"


def plain(text: str) -> str:
    """Escape markdown and mentions, and drop invisible direction and zero-width characters."""
    escaped = _MARKDOWN.sub(r"\\\1", INVISIBLE.sub("", text))
    return _LEADING_LIST.sub(r"\1\\.", escaped)


def quote(text: str, limit: int) -> str:
    """Show member text on one visible line, escaped, and shortened to `limit` once escaped."""
    flat = " ".join(INVISIBLE.sub("", text).split())
    cut = limit
    shown = plain(shorten(flat, cut))
    while len(shown) > limit:
        # Escaping adds at most one character per character: cut by half the overshoot.
        cut -= max(1, (len(shown) - limit + 1) // 2)
        shown = plain(shorten(flat, cut))
    return shown


def format_duration(seconds: float) -> str:
    """Write a duration like `42s` or `3m 05s`."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def relative_time(unix: int) -> str:
    """A Discord timestamp that each reader sees as "in 3 minutes", in their own language."""
    return f"<t:{unix}:R>"


def format_size(size: int) -> str:
    """A file size as people read it."""
    if size >= 2**20:
        return f"{size / 2**20:.1f} MiB".replace(".0 MiB", " MiB")
    return f"{max(1, round(size / 1024))} KiB"
