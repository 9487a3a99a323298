"""Deciding what to upload: fit an output under Discord's upload limit, and name it.

MP4 outputs are re-encoded at falling bitrates and then smaller sizes, GIFs with fewer colours
and then smaller sizes, until one fits; the FFmpeg work itself is in `bot.media.ffmpeg`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.media.ffmpeg import VideoInfo, _file_size, probe, to_gif, to_mp4

log = logging.getLogger(__name__)

OutputFormat = Literal["mp4", "gif"]
# Told of each conversion: format, outcome (fitted, too_big, failed, canceled), seconds taken.
ConversionObserver = Callable[[str, str, float], None]

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's per-file limit on a server without boosts
CONTENT_TYPES: dict[str, str] = {"mp4": "video/mp4", "gif": "image/gif"}

MAX_ATTEMPTS = 6  # encodes tried by fit_to_limit before it gives up
MIN_SIDE = 64  # no output is scaled below this many pixels on its shorter side
MIN_BITS_PER_PIXEL = 0.05  # below this H.264 turns to mush: shrink the picture instead
SIZE_HEADROOM = 0.92  # rate control overshoots a little; aim under the limit
SLUG_MAX = 40

# Latin letters that NFKD does not take apart into an ASCII letter and a mark.
_LATIN = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "ø": "o",
        "Ø": "O",
        "œ": "oe",
        "Œ": "OE",
        "đ": "d",
        "Đ": "D",
        "ł": "l",
        "Ł": "L",
        "þ": "th",
        "Þ": "TH",
    }
)
_MENTION = re.compile(r"<(?:[@#][!&]?\d+|a?:\w+:\d+|/[^>]+:\d+|t:\d+(?::\w)?)>")


@dataclass(frozen=True, slots=True)
class Upload:
    """A file ready to attach: where it is, the name to give it, and its type."""

    path: Path
    filename: str
    content_type: str
    size_bytes: int


def upload_limit(*known: int | None) -> int:
    """Return the first known upload limit (interaction's, then guild's), else the default."""
    for limit in known:
        if limit is not None and limit > 0:
            return limit
    return DEFAULT_UPLOAD_LIMIT


def output_filename(seed: int, prompt: str, fmt: str) -> str:
    """Name an output after its seed and a short slug of its prompt."""
    extension = _extension(fmt)
    slug = _slug(prompt)
    return f"animate-{seed}-{slug}.{extension}" if slug else f"animate-{seed}.{extension}"


async def fit_to_limit(
    src: Path,
    limit_bytes: int,
    workdir: Path,
    *,
    fmt: OutputFormat = "mp4",
    conversions: asyncio.Semaphore | None = None,
    observe: ConversionObserver | None = None,
) -> Path | None:
    """Return `src` if it is already a `fmt` file within the limit, else a smaller copy in
    `workdir` with the same frames, timing and aspect ratio, or None if nothing fits.

    MP4 lowers the bitrate first and shrinks the picture only once the bitrate would be too
    thin for it; GIF drops to 128 colours, then shrinks. Failed attempts are deleted. Only an
    actual conversion takes a slot of `conversions`: a file posted as it is waits for none.
    `observe` hears of each conversion: format, outcome (fitted, too_big, failed, canceled), time.
    """
    source = Path(src)
    _extension(fmt)
    if _container(source) == fmt and _file_size(source) <= limit_bytes:
        return source
    async with conversions or contextlib.nullcontext():
        started = time.monotonic()
        outcome = "failed"
        try:
            info = await probe(source)
            fit = _fit_gif if fmt == "gif" else _fit_mp4
            fitted = await fit(source, info, limit_bytes, Path(workdir))
            outcome = "too_big" if fitted is None else "fitted"
            return fitted
        except asyncio.CancelledError:
            # The job was stopped or the bot is shutting down: FFmpeg did not fail.
            outcome = "canceled"
            raise
        finally:
            if observe is not None:
                observe(fmt, outcome, time.monotonic() - started)


async def prepare_upload(
    downloaded: Path,
    *,
    fmt: OutputFormat,
    limit_bytes: int,
    workdir: Path,
    seed: int,
    prompt: str,
    conversions: asyncio.Semaphore | None = None,
    observe: ConversionObserver | None = None,
) -> Upload | None:
    """Turn a downloaded output into the file to post in `fmt`, or None if none can fit."""
    path = await fit_to_limit(
        downloaded, limit_bytes, workdir, fmt=fmt, conversions=conversions, observe=observe
    )
    if path is None:
        return None
    return Upload(path, output_filename(seed, prompt, fmt), CONTENT_TYPES[fmt], _file_size(path))


# Fitting ------------------------------------------------------------------------------------


async def _fit_mp4(source: Path, info: VideoInfo, limit: int, workdir: Path) -> Path | None:
    """Re-encode at falling bitrates, then smaller sizes, until the file fits."""
    # The moov index grows with the frame count; x264 adds a header of its own.
    overhead = 2048 + 32 * info.frames
    budget_bits = (limit * SIZE_HEADROOM - overhead) * 8
    duration = info.duration
    if budget_bits <= 0 or duration <= 0:
        log.info("no MP4 of %d frames can fit in %d bytes", info.frames, limit)
        return None
    correction = 1.0
    scale = 1.0
    for attempt in range(MAX_ATTEMPTS):
        bitrate = int(budget_bits * correction / duration)
        # Thinner than MIN_BITS_PER_PIXEL: give the bits to fewer pixels instead.
        pixels_per_second = info.width * info.height * info.fps
        scale = min(scale, math.sqrt(bitrate / (pixels_per_second * MIN_BITS_PER_PIXEL)))
        size, _ = _scaled(info.width, info.height, scale)
        target = workdir / f"fit-{attempt}.mp4"
        await to_mp4(source, target, bitrate=max(bitrate, 1000), size=size)
        produced = _file_size(target)
        log.info(
            "MP4 attempt %d: %dx%d at %d bit/s is %d bytes (limit %d)",
            attempt + 1,
            *size,
            bitrate,
            produced,
            limit,
        )
        if produced <= limit:
            return target
        target.unlink()
        correction *= limit * SIZE_HEADROOM / produced
    return None


async def _fit_gif(source: Path, info: VideoInfo, limit: int, workdir: Path) -> Path | None:
    """Convert with a full palette, then 128 colours, then at smaller sizes until it fits."""
    scale = 1.0
    colors = 256
    for attempt in range(MAX_ATTEMPTS):
        size, floored = _scaled(info.width, info.height, scale, even=False)
        target = workdir / f"fit-{attempt}.gif"
        await to_gif(source, target, max_colors=colors, size=size)
        produced = _file_size(target)
        log.info(
            "GIF attempt %d: %dx%d with %d colours is %d bytes (limit %d)",
            attempt + 1,
            *size,
            colors,
            produced,
            limit,
        )
        if produced <= limit:
            return target
        target.unlink()
        if floored:
            break
        if colors == 256 and produced <= limit * 1.25:
            colors = 128  # close: fewer colours may be enough, at the same size
            continue
        colors = 128
        # A GIF's size follows its pixel count.
        scale *= min(0.9, math.sqrt(limit * SIZE_HEADROOM / produced))
    return None


def _scaled(
    width: int, height: int, scale: float, *, even: bool = True
) -> tuple[tuple[int, int], bool]:
    """Size a picture by `scale`, keeping its aspect ratio; say if MIN_SIDE stopped it."""
    scale = min(scale, 1.0)
    shorter = min(width, height)
    floored = False
    if shorter * scale < MIN_SIDE:
        scale = min(1.0, MIN_SIDE / shorter)
        floored = True
    step = 2 if even else 1  # 4:2:0 chroma needs even sides
    new_width = max(step, round(width * scale / step) * step)
    new_height = max(step, round(height * scale / step) * step)
    return (new_width, new_height), floored


# Names ----------------------------------------------------------------------------------------


def _extension(fmt: str) -> str:
    """Check an output format and return its file extension."""
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown output format {fmt!r}")
    return fmt


def _slug(prompt: str) -> str:
    """Lowercase ASCII words of a prompt joined by '-', cut on a word boundary."""
    # Mentions and custom emoji would leave only their numeric ids behind.
    text = _MENTION.sub(" ", prompt).translate(_LATIN)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = ""
    for word in re.findall(r"[a-z0-9]+", ascii_text.lower()):
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > SLUG_MAX:
            # One overlong first word is cut rather than dropped.
            return slug or word[:SLUG_MAX]
        slug = candidate
    return slug


def _container(path: Path) -> str | None:
    """Tell an MP4 or GIF file from its first bytes."""
    try:
        with path.open("rb") as file:
            head = file.read(12)
    except OSError:
        return None
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[4:8] == b"ftyp":
        return "mp4"
    return None
