"""Reading progress from a prediction's logs (tqdm bars printed by the model)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

FRAME_COUNT = 16

# "40%|####      | 10/25 [00:04<00:06,  2.41it/s]"; the rate may also read "s/it".
_TQDM = re.compile(
    r"(?P<done>\d+)/(?P<total>\d+)\s*\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)"
    r"(?:,\s*(?P<rate>[\d.]+)(?P<unit>it/s|s/it))?"
)
_SEED = re.compile(r"Using seed:\s*(?P<seed>\d+)")


class Phase(StrEnum):
    """What the model is doing, as far as its logs tell."""

    WAITING = "waiting"
    SAMPLING = "sampling"
    RENDERING = "rendering"


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a running prediction."""

    phase: Phase
    step: int = 0
    total: int = 0
    seconds_left: float | None = None
    seed: int | None = None
    step_seconds: float | None = None  # seconds per sampling step, from the bar's rate
    frame_seconds: float | None = None  # seconds per rendered frame, from the frame bar's rate

    @property
    def fraction(self) -> float:
        """Share of the sampling done, 0..1 (rendering counts as done)."""
        if self.phase is Phase.RENDERING:
            return 1.0
        return self.step / self.total if self.total else 0.0


def parse_progress(logs: str, steps: int) -> Progress:
    """Read the latest sampling bar (total == `steps`) and whether the frame bar has begun."""
    seed_match = _SEED.search(logs)
    seed = int(seed_match["seed"]) if seed_match else None
    last_sampling: re.Match[str] | None = None
    last_frames: re.Match[str] | None = None
    sampling_finished = False
    # tqdm rewrites its line with carriage returns; treat them as line breaks.
    for match in _TQDM.finditer(logs.replace("\r", "\n")):
        total, done = int(match["total"]), int(match["done"])
        if total == FRAME_COUNT and (sampling_finished or steps != FRAME_COUNT):
            last_frames = match
        elif total == steps and last_frames is None:
            last_sampling = match
            sampling_finished = done >= steps
    step_seconds = _per_item(last_sampling) if last_sampling is not None else None
    if last_frames is not None:
        frames_done = int(last_frames["done"])
        return Progress(
            Phase.RENDERING,
            step=frames_done,
            total=FRAME_COUNT,
            seconds_left=_remaining(last_frames, frames_done, FRAME_COUNT),
            seed=seed,
            step_seconds=step_seconds,
            frame_seconds=_per_item(last_frames),
        )
    if last_sampling is not None:
        done = int(last_sampling["done"])
        return Progress(
            Phase.SAMPLING,
            step=done,
            total=steps,
            seconds_left=_remaining(last_sampling, done, steps),
            seed=seed,
            step_seconds=step_seconds,
        )
    return Progress(Phase.WAITING, total=steps, seed=seed)


def _remaining(match: re.Match[str], done: int, total: int) -> float | None:
    """Estimate seconds left in a bar from its rate, else from tqdm's own (whole-second) guess."""
    per_item = _per_item(match)
    if per_item is not None:
        return per_item * (total - done)
    return _seconds(match["remaining"])


def _per_item(match: re.Match[str]) -> float | None:
    """Seconds per iteration of a tqdm bar, from its rate (`it/s` or `s/it`), if it shows one."""
    rate = match["rate"]
    if not rate:
        return None
    value = float(rate)
    if match["unit"] == "s/it":
        return value
    return 1 / value if value else None


def _seconds(clock: str) -> float | None:
    """Convert tqdm's `MM:SS` or `H:MM:SS` to seconds."""
    if "?" in clock:
        return None
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def render_bar(fraction: float, width: int = 16) -> str:
    """Draw a text progress bar for a status message."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)
