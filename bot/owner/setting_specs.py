"""The settings an owner can change: how each is parsed, validated and shown, and their limits."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.core.jobs import (
    CHECKPOINTS,
    INVISIBLE,
    MAX_GUIDANCE,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    MOTION_MODULES,
)

MAX_CHANNELS = 50
MAX_BLOCKED_PATTERNS = 100
MAX_NEGATIVE_PROMPT = 500  # leaves room for the member's own in the model's 1000 characters
MAX_RUNNING_LIMIT = 50
MAX_QUEUED_LIMIT = 100
MAX_DAILY_REQUESTS = 10_000
MAX_DAILY_GPU_SECONDS = 86_400.0 * 100  # a hundred GPUs busy all day: surely a typo beyond


class InvalidSetting(ValueError):
    """A setting's new value is not acceptable; the message says why, for the server owner."""


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
            "Paid GPU seconds per day for the server (UTC)",
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
