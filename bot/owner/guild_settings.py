"""Each server's own settings: defaults from the environment, changes stored in SQLite."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from bot.core.jobs import MAX_PROMPT_LENGTH, GenerationRequest, InvalidRequest
from bot.owner.blocked_words import check_pattern, matches, normalise, tokens
from bot.owner.setting_specs import (
    MAX_BLOCKED_PATTERNS,
    MAX_CHANNELS,
    RESETTABLE,
    SETTINGS,
    InvalidSetting,
)
from bot.storage.base import Store

log = logging.getLogger(__name__)

# Whether a channel of the server still exists, as the Discord side knows it.
ChannelExists = Callable[[int], bool]
# The `updated_by` of changes no member made (a listed channel was deleted): no Discord user
# has id 0, and the settings need no bot id passed down for it.
BY_THE_BOT = 0
# The settings that list channels, cleaned up when Discord reports one of them deleted.
CHANNEL_LISTS = ("channel_ids",)


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
        words = tokens(prompt)
        return any(matches(tokens(pattern), words) for pattern in self.blocked_patterns)

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


_FIELD_NAMES = {f.name for f in fields(GuildSettings)}


class GuildSettingsService:
    """Every server's effective settings, kept in memory and written through to the store."""

    def __init__(self, store: Store, defaults: GuildSettings) -> None:
        self._store = store
        self._defaults = defaults
        self._changed: dict[int, dict[str, Any]] = {}  # per server: only what the owner set
        self._ignored: set[tuple[int, str]] = set()  # stored values that no longer read

    @property
    def defaults(self) -> GuildSettings:
        """The settings of a server whose owner changed nothing."""
        return self._defaults

    async def load(self) -> None:
        """Read every server's stored changes; one that no longer reads is logged and skipped."""
        changed: dict[int, dict[str, Any]] = {}
        for guild_id, name, value_json in await self._store.guild_settings():
            try:
                value = _decode(name, json.loads(value_json))
            except (ValueError, TypeError, InvalidSetting):
                if (guild_id, name) not in self._ignored:  # read again often when shared
                    self._ignored.add((guild_id, name))
                    log.warning("ignoring stored setting %s of server %s", name, guild_id)
                continue
            changed.setdefault(guild_id, {})[name] = value
        # Swapped whole, so that a request read meanwhile never sees a server's defaults.
        self._changed = changed

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
        value = check_pattern(pattern)
        current = self.get(guild_id).blocked_patterns
        if value in current:
            raise InvalidSetting("That pattern is already blocked.")
        if len(current) >= MAX_BLOCKED_PATTERNS:
            raise InvalidSetting(f"At most {MAX_BLOCKED_PATTERNS} patterns can be blocked.")
        return await self._put(guild_id, "blocked_patterns", (*current, value), by=by)

    async def unblock(self, guild_id: int, pattern: str, *, by: int) -> GuildSettings:
        """Remove a blocked word or pattern."""
        value = normalise(pattern)
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


def _decode(name: str, value: Any) -> Any:
    """Turn a stored JSON value back into a setting, checking it as a new one would be."""
    if name == "channel_ids":
        return tuple(int(v) for v in value)
    if name == "blocked_patterns":
        return tuple(check_pattern(str(v)) for v in value)
    spec = SETTINGS.get(name)
    if spec is None or name not in _FIELD_NAMES:
        raise InvalidSetting(f"unknown setting {name}")
    if isinstance(value, bool):
        return spec.parse("on" if value else "off")
    return spec.parse(str(value))
