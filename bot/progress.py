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
    if last_frames is not None:
        return Progress(
            Phase.RENDERING,
            step=int(last_frames["done"]),
            total=FRAME_COUNT,
            seconds_left=_seconds(last_frames["remaining"]),
            seed=seed,
        )
    if last_sampling is not None:
        done = int(last_sampling["done"])
        return Progress(
            Phase.SAMPLING,
            step=done,
            total=steps,
            seconds_left=_remaining(last_sampling, done, steps),
            seed=seed,
        )
    return Progress(Phase.WAITING, total=steps, seed=seed)


def _remaining(match: re.Match[str], done: int, total: int) -> float | None:
    """Estimate seconds left in the sampling bar from its rate, else from tqdm's own guess."""
    rate = match["rate"]
    if rate:
        value = float(rate)
        per_step = value if match["unit"] == "s/it" else (1 / value if value else None)
        if per_step is not None:
            return per_step * (total - done)
    return _seconds(match["remaining"])


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
