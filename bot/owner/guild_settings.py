"""Each server's own settings: defaults from the environment, changes stored in SQLite."""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from bot.app.settings import Settings
from bot.core.jobs import (
    CHECKPOINTS,
    INVISIBLE,
    MAX_GUIDANCE,
    MAX_PROMPT_LENGTH,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    MOTION_MODULES,
    GenerationRequest,
    InvalidRequest,
)
from bot.storage.base import Store

log = logging.getLogger(__name__)

MAX_CHANNELS = 50
MAX_BLOCKED_PATTERNS = 100
MAX_PATTERN_LENGTH = 100
MAX_NEGATIVE_PROMPT = 500  # leaves room for the member's own in the model's 1000 characters
MAX_RUNNING_LIMIT = 50
MAX_QUEUED_LIMIT = 100
MAX_DAILY_REQUESTS = 10_000
MAX_DAILY_GPU_SECONDS = 86_400.0 * 100  # a hundred GPUs busy all day: surely a typo beyond


# Whether a channel of the server still exists, as the Discord side knows it.
ChannelExists = Callable[[int], bool]
# The `updated_by` of changes no member made (a listed channel was deleted): no Discord user
# has id 0, and the settings need no bot id passed down for it.
BY_THE_BOT = 0
# The settings that list channels, cleaned up when Discord reports one of them deleted.
CHANNEL_LISTS = ("channel_ids",)


class InvalidSetting(ValueError):
    """A setting's new value is not acceptable; the message says why, for the server owner."""


class Refused(Exception):
    """A request may not be queued here; the message is meant for the member."""


@dataclass(frozen=True, slots=True)
class GuildSettings:
    """The effective settings of one server."""

    channel_ids: tuple[int, ...]  # empty: /animate works in every channel
    model: str
    motion_module: str
    steps: int
    guidance_scale: float
    running_limit: int  # predictions running at once for the server
    queued_per_member: int  # requests one member may have waiting or running
    daily_requests_per_member: int  # 0: no limit
    daily_gpu_seconds: float  # 0: no limit
    negative_prompt: str  # appended to every request's negative prompt
    blocked_patterns: tuple[str, ...]
    spoilers: bool
    age_restricted_only: bool

    @classmethod
    def from_environment(cls, settings: Settings) -> GuildSettings:
        """The settings of a server whose owner changed nothing."""
        return cls(
            channel_ids=(),
            model=settings.default_model,
            motion_module=settings.default_motion_module,
            steps=settings.default_steps,
            guidance_scale=settings.default_guidance_scale,
            running_limit=settings.max_running_per_guild,
            queued_per_member=settings.max_queued_per_member,
            daily_requests_per_member=settings.max_requests_per_member_per_day,
            daily_gpu_seconds=settings.max_gpu_seconds_per_guild_per_day,
            negative_prompt=settings.default_negative_prompt.strip(),
            blocked_patterns=(),
            spoilers=settings.default_spoilers,
            age_restricted_only=settings.default_age_restricted_only,
        )

    def listed_channels(self, exists: ChannelExists | None = None) -> tuple[int, ...]:
        """The allowed channels that still exist; all of them when `exists` is None (unknown)."""
        if exists is None:
            return self.channel_ids
        return tuple(c for c in self.channel_ids if exists(c))

    def allows_channel(self, channel_id: int, exists: ChannelExists | None = None) -> bool:
        """True if /animate may be used in the channel."""
        listed = self.listed_channels(exists)
        return not listed or channel_id in listed

    def refusal(
        self,
        *,
        channel_ids: Sequence[int],
        age_restricted: bool,
        prompt: str,
        channel_exists: ChannelExists | None = None,
    ) -> str | None:
        """Say why these settings refuse a prompt in a channel (or thread), or None.

        `channel_exists` tells which of the server's channels still exist (None: not known).
        """
        # A listed channel deleted since (while the bot was away, or before it heard) counts as
        # taken off the list, so a list whose every channel is gone allows every channel, as
        # taking the last one off the list does. The alternative, refusing everywhere, would
        # leave members nowhere to use the bot, with a refusal naming only channels that no
        # one can open; an owner who wants it limited again lists a channel that exists.
        listed = self.listed_channels(channel_exists)
        # A thread counts as its parent channel, so callers pass both ids.
        if listed and not any(channel_id in listed for channel_id in channel_ids):
            places = ", ".join(f"<#{c}>" for c in listed)
            return f"Animations can be made only in these channels of this server: {places}."
        if self.age_restricted_only and not age_restricted:
            return "In this server, animations can be made only in age-restricted channels."
        if self.blocks(prompt):
            # Naming the pattern would teach how to get around it.
            return "This prompt is not allowed in this server; please try a different one."
        return None

    def blocks(self, prompt: str) -> bool:
        """True if the prompt matches any blocked word or pattern."""
        words = _tokens(prompt)
        return any(_matches(_tokens(pattern), words) for pattern in self.blocked_patterns)

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        """Append the server's negative prompt, unless the request already carries it."""
        extra = self.negative_prompt
        if not extra or extra in request.negative_prompt:
            return request
        combined = f"{request.negative_prompt}, {extra}" if request.negative_prompt else extra
        try:
            return replace(request, negative_prompt=combined)
        except InvalidRequest:
            raise InvalidRequest(
                f"Your negative prompt and this server's own ({len(extra)} characters) "
                f"together are longer than {MAX_PROMPT_LENGTH} characters; shorten yours."
            ) from None


def _normalise(text: str) -> str:
    """A pattern as stored: NFKC, no invisible characters, one case, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", INVISIBLE.sub("", text)).casefold().split())


# Words are runs of letters or runs of digits: `gore_`, `gore2` and `ｇｏｒｅ` all hold `gore`.
_TOKEN = re.compile(r"(?:[^\W\d_]|\*)+|\d+")


def _tokens(text: str) -> list[str]:
    """Text as blocked patterns see it: NFKC, no invisible characters, one case, words."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", INVISIBLE.sub("", text)).casefold())


def _matches(pattern: list[str], words: list[str]) -> bool:
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


# The settings an owner can change with `set`, how each value is read and shown.
@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting: its name in commands, a description, and how its value is read."""

    name: str
    label: str
    parse: Callable[[str], Any]
    show: Callable[[Any], str]


def _parse_model(text: str) -> str:
    """A checkpoint by file name or by the name people see."""
    return _choice(text, CHECKPOINTS, "model")


def _parse_motion_module(text: str) -> str:
    """A motion module by id or by the name people see."""
    return _choice(text, MOTION_MODULES, "motion module")


def _choice(text: str, options: dict[str, str], what: str) -> str:
    """Find a value among options, by key or label, ignoring case."""
    wanted = text.strip().casefold()
    for key, label in options.items():
        if wanted in (key.casefold(), label.casefold()):
            return key
    names = ", ".join(options.values())
    raise InvalidSetting(f"Unknown {what}; choose one of: {names}.")


def _whole(low: int, high: int, what: str) -> Callable[[str], int]:
    """A parser of whole numbers in a range."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise InvalidSetting(f"{what} must be a whole number from {low} to {high}.") from None
        if not low <= value <= high:
            raise InvalidSetting(f"{what} must be a whole number from {low} to {high}.")
        return value

    return parse


def _number(low: float, high: float, what: str) -> Callable[[str], float]:
    """A parser of decimal numbers in a range."""

    def parse(text: str) -> float:
        try:
            raw = float(text.strip())
        except ValueError:
            raise InvalidSetting(f"{what} must be a number from {low:g} to {high:g}.") from None
        # Rounded first, so a value too small to store is refused, not stored as 0.
        value = round(raw, 2) if math.isfinite(raw) else raw
        if not (math.isfinite(value) and low <= value <= high) or (value == 0 and raw != 0):
            raise InvalidSetting(f"{what} must be a number from {low:g} to {high:g}.")
        return value

    return parse


def _parse_flag(text: str) -> bool:
    """Yes or no, in the words people type."""
    value = text.strip().casefold()
    if value in {"on", "yes", "true", "1", "enabled"}:
        return True
    if value in {"off", "no", "false", "0", "disabled"}:
        return False
    raise InvalidSetting("Write on or off.")


def _parse_negative_prompt(text: str) -> str:
    """The server's negative prompt: any text up to its limit; `none` clears it."""
    value = " ".join(INVISIBLE.sub("", text).split())
    if value.casefold() in {"none", "-"}:
        return ""
    if len(value) > MAX_NEGATIVE_PROMPT:
        raise InvalidSetting(
            f"The server's negative prompt must be at most {MAX_NEGATIVE_PROMPT} characters."
        )
    return value


def _show_limit(unit: str) -> Callable[[Any], str]:
    """Show a limit where 0 means none."""
    return lambda value: "no limit" if not value else f"{value:g} {unit}"


def _on_off(value: Any) -> str:
    """Show a flag."""
    return "on" if value else "off"


SETTINGS: dict[str, SettingSpec] = {
    spec.name: spec
    for spec in (
        SettingSpec("model", "Default model", _parse_model, lambda v: CHECKPOINTS[v]),
        SettingSpec(
            "motion_module",
            "Default motion module",
            _parse_motion_module,
            lambda v: MOTION_MODULES[v],
        ),
        SettingSpec("steps", "Default steps", _whole(MIN_STEPS, MAX_STEPS, "Steps"), str),
        SettingSpec(
            "guidance_scale",
            "Default guidance scale",
            _number(MIN_GUIDANCE, MAX_GUIDANCE, "Guidance scale"),
            lambda v: f"{v:g}",
        ),
        SettingSpec(
            "running_limit",
            "Predictions running at once",
            _whole(1, MAX_RUNNING_LIMIT, "The running limit"),
            str,
        ),
        SettingSpec(
            "queued_per_member",
            "Requests waiting per member",
            _whole(1, MAX_QUEUED_LIMIT, "The queued limit per member"),
            str,
        ),
        SettingSpec(
            "daily_requests_per_member",
            "Requests per member per day (UTC)",
            _whole(0, MAX_DAILY_REQUESTS, "The daily requests per member (0: no limit)"),
            _show_limit("requests"),
        ),
        SettingSpec(
            "daily_gpu_seconds",
            "GPU seconds per day for the server (UTC)",
            _number(0, MAX_DAILY_GPU_SECONDS, "The daily GPU seconds (0: no limit)"),
            _show_limit("seconds"),
        ),
        SettingSpec(
            "negative_prompt",
            "Negative prompt always added",
            _parse_negative_prompt,
            lambda v: v or "none",
        ),
        SettingSpec("spoilers", "Results posted as spoilers", _parse_flag, _on_off),
        SettingSpec("age_restricted_only", "Only in age-restricted channels", _parse_flag, _on_off),
    )
}
# Lists are changed one entry at a time, by their own commands; `reset` empties them.
LIST_SETTINGS = {"channel_ids": "Channels", "blocked_patterns": "Blocked words and patterns"}
RESETTABLE = (*SETTINGS, *LIST_SETTINGS)
_FIELD_NAMES = {f.name for f in fields(GuildSettings)}


class GuildSettingsService:
    """Every server's effective settings, kept in memory and written through to the store."""

    def __init__(self, store: Store, defaults: GuildSettings) -> None:
        self._store = store
        self._defaults = defaults
        self._changed: dict[int, dict[str, Any]] = {}  # per server: only what the owner set

    @property
    def defaults(self) -> GuildSettings:
        """The settings of a server whose owner changed nothing."""
        return self._defaults

    async def load(self) -> None:
        """Read every server's stored changes; one that no longer reads is logged and skipped."""
        self._changed.clear()
        for guild_id, name, value_json in await self._store.guild_settings():
            try:
                value = _decode(name, json.loads(value_json))
            except (ValueError, TypeError, InvalidSetting):
                log.warning("ignoring stored setting %s of server %s", name, guild_id)
                continue
            self._changed.setdefault(guild_id, {})[name] = value

    def get(self, guild_id: int) -> GuildSettings:
        """The effective settings of a server."""
        changed = self._changed.get(guild_id)
        return replace(self._defaults, **changed) if changed else self._defaults

    def is_changed(self, guild_id: int, name: str) -> bool:
        """True if the server's owner set this setting."""
        return name in self._changed.get(guild_id, {})

    async def set(self, guild_id: int, name: str, text: str, *, by: int) -> GuildSettings:
        """Validate and store a new value for one setting; return the new settings."""
        spec = SETTINGS.get(name)
        if spec is None:
            raise InvalidSetting("Unknown setting; choose one from the list.")
        return await self._put(guild_id, name, spec.parse(text), by=by)

    async def reset(self, guild_id: int, name: str) -> GuildSettings:
        """Return one setting to its default (lists become empty)."""
        if name not in RESETTABLE:
            raise InvalidSetting("Unknown setting; choose one from the list.")
        await self._store.delete_guild_setting(guild_id, name)
        self._changed.get(guild_id, {}).pop(name, None)
        return self.get(guild_id)

    async def add_channel(self, guild_id: int, channel_id: int, *, by: int) -> GuildSettings:
        """Allow /animate in one more channel (the first one limits it to that channel)."""
        current = self.get(guild_id).channel_ids
        if channel_id in current:
            raise InvalidSetting("That channel is already in the list.")
        if len(current) >= MAX_CHANNELS:
            raise InvalidSetting(f"At most {MAX_CHANNELS} channels can be listed.")
        return await self._put(guild_id, "channel_ids", (*current, channel_id), by=by)

    async def remove_channel(self, guild_id: int, channel_id: int, *, by: int) -> GuildSettings:
        """Take a channel off the list."""
        current = self.get(guild_id).channel_ids
        if channel_id not in current:
            raise InvalidSetting("That channel is not in the list.")
        remaining = tuple(c for c in current if c != channel_id)
        if not remaining:
            return await self.reset(guild_id, "channel_ids")
        return await self._put(guild_id, "channel_ids", remaining, by=by)

    async def forget_channel(self, guild_id: int, channel_id: int) -> bool:
        """Drop a deleted channel from every list of the server's; True if any named it.

        No member asked for this (Discord reported the channel deleted), so the change is
        stored as made by `BY_THE_BOT`. A list left empty is reset: every channel is allowed.
        """
        found = False
        for name in CHANNEL_LISTS:
            current: tuple[int, ...] = self._changed.get(guild_id, {}).get(name, ())
            if channel_id not in current:
                continue
            found = True
            remaining = tuple(c for c in current if c != channel_id)
            if remaining:
                await self._put(guild_id, name, remaining, by=BY_THE_BOT)
            else:
                await self.reset(guild_id, name)
            log.info(
                "server %s: deleted channel %s taken off %s (%d left)",
                guild_id,
                channel_id,
                name,
                len(remaining),
            )
        return found

    async def block(self, guild_id: int, pattern: str, *, by: int) -> GuildSettings:
        """Add a blocked word or pattern."""
        value = _check_pattern(pattern)
        current = self.get(guild_id).blocked_patterns
        if value in current:
            raise InvalidSetting("That pattern is already blocked.")
        if len(current) >= MAX_BLOCKED_PATTERNS:
            raise InvalidSetting(f"At most {MAX_BLOCKED_PATTERNS} patterns can be blocked.")
        return await self._put(guild_id, "blocked_patterns", (*current, value), by=by)

    async def unblock(self, guild_id: int, pattern: str, *, by: int) -> GuildSettings:
        """Remove a blocked word or pattern."""
        value = _normalise(pattern)
        current = self.get(guild_id).blocked_patterns
        if value not in current:
            raise InvalidSetting("That pattern is not in the blocked list.")
        remaining = tuple(p for p in current if p != value)
        if not remaining:
            return await self.reset(guild_id, "blocked_patterns")
        return await self._put(guild_id, "blocked_patterns", remaining, by=by)

    async def _put(self, guild_id: int, name: str, value: Any, *, by: int) -> GuildSettings:
        """Store a value and keep the cache in step."""
        stored = list(value) if isinstance(value, tuple) else value
        await self._store.put_guild_setting(guild_id, name, json.dumps(stored), updated_by=by)
        self._changed.setdefault(guild_id, {})[name] = value
        return self.get(guild_id)


def _check_pattern(pattern: str) -> str:
    """Validate a blocked pattern and return it as stored."""
    value = _normalise(pattern)
    if not any(token.strip("*") for token in _tokens(value)):
        raise InvalidSetting("A blocked pattern needs at least one letter or digit besides `*`.")
    if len(value) > MAX_PATTERN_LENGTH:
        raise InvalidSetting(f"A blocked pattern must be at most {MAX_PATTERN_LENGTH} characters.")
    return value


def _decode(name: str, value: Any) -> Any:
    """Turn a stored JSON value back into a setting, checking it as a new one would be."""
    if name == "channel_ids":
        return tuple(int(v) for v in value)
    if name == "blocked_patterns":
        return tuple(_check_pattern(str(v)) for v in value)
    spec = SETTINGS.get(name)
    if spec is None or name not in _FIELD_NAMES:
        raise InvalidSetting(f"unknown setting {name}")
    if isinstance(value, bool):
        return spec.parse("on" if value else "off")
    return spec.parse(str(value))
