"""The FFmpeg layer: locate FFmpeg, run it with a time limit, probe, convert to GIF or MP4.

All work is done by the FFmpeg executable that the `imageio-ffmpeg` wheel ships, run as an
asyncio subprocess. It was chosen over PyAV because:

- the wheel carries one static FFmpeg with libx264 and the palettegen/paletteuse filters on
  Linux x86_64 and aarch64, with no Python ABI coupling and nothing fetched at run time;
- a subprocess has its own memory and can be killed: a conversion that hangs or is canceled
  is ended at once, whereas a PyAV call in a thread cannot be stopped, and a crash in codec
  code cannot take the bot down with it;
- the whole conversion is one filter graph, so frames never pass through Python.

The price is a larger wheel and reading FFmpeg's text output; the only output parsed is the
documented `framecrc` format (one line per decoded frame), never the log. FFmpeg's log goes to
our log; users see only the short message of a `MediaError`. Only the video stream is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg

log = logging.getLogger(__name__)

FFMPEG_TIMEOUT = 120.0  # seconds for one FFmpeg run; a 2 s clip takes about one
CRF = 18  # H.264 quality when the limit leaves room: visually lossless for these clips

# Demuxers an output may use. A downloaded file is untrusted: without this list FFmpeg would
# follow a playlist (HLS, concat) hidden in it to other files or hosts.
_INPUT_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,gif,matroska,webm"
_GIF_DITHER = "bayer:bayer_scale=5"  # ordered dither: no crawling noise, compresses well
_STDERR_TAIL = 4000  # characters of FFmpeg's log kept for our log when it fails


class MediaError(Exception):
    """A media file could not be read or converted; the message is fit for users."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a video holds: decoded size, exact frame count, timing and file size."""

    width: int
    height: int
    frames: int
    fps: float
    duration: float
    size_bytes: int


async def probe(path: Path) -> VideoInfo:
    """Decode every frame of a file's first video stream and describe it."""
    source = Path(path)
    size = _file_size(source)
    info = _FrameCount()
    await _run(
        [
            *_input(source),
            "-map",
            "0:v:0",
            # Keep every frame with its own timestamp, in the demuxer's time base, so the
            # count and duration are exact rather than resampled to a guessed rate.
            "-fps_mode",
            "passthrough",
            "-enc_time_base:v",
            "demux",
            "-f",
            "framecrc",
            "-",
        ],
        failure="The animation file could not be read.",
        on_line=info.feed,
    )
    if info.frames == 0 or info.width <= 0 or info.height <= 0:
        raise MediaError("The animation file holds no video.")
    duration = float(info.span * info.time_base)
    fps = info.frames / duration if duration > 0 else 0.0
    return VideoInfo(info.width, info.height, info.frames, fps, duration, size)


async def to_gif(
    src: Path, dst: Path, *, max_colors: int = 256, size: tuple[int, int] | None = None
) -> Path:
    """Convert a video to a looping GIF with its own palette, keeping every frame and its timing.

    `size` scales the picture (width, height); by default it keeps the source size.
    """
    if not 2 <= max_colors <= 256:
        raise ValueError(f"max_colors must be 2-256, not {max_colors}")
    source, target = Path(src), Path(dst)
    scale = f"scale={size[0]}:{size[1]}:flags=lanczos,setsar=1," if size else ""
    graph = (
        f"[0:v]{scale}split[a][b];"
        # One palette for the whole clip, so colours do not flicker from frame to frame.
        f"[a]palettegen=max_colors={max_colors}:stats_mode=full[p];"
        f"[b][p]paletteuse=dither={_GIF_DITHER}:diff_mode=rectangle"
    )
    await _run(
        [
            *_input(source),
            "-filter_complex",
            graph,
            "-fps_mode",
            "passthrough",
            "-loop",
            "0",
            "-f",
            "gif",
            str(target),
        ],
        failure="The animation could not be converted to a GIF.",
    )
    return target


async def to_mp4(src: Path, dst: Path, *, bitrate: int, size: tuple[int, int]) -> Path:
    """Encode a video as H.264 MP4 of this size, at most `bitrate` bit/s, keeping every frame."""
    source, target = Path(src), Path(dst)
    width, height = size
    await _run(
        [
            *_input(source),
            "-map",
            "0:v:0",
            "-vf",
            f"scale={width}:{height}:flags=lanczos,setsar=1",
            "-fps_mode",
            "passthrough",
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            # Constant quality, capped: a clip with room to spare is not inflated to the
            # budget, and a half-second VBV buffer holds a tight one to the bitrate (a
            # larger one lets the first seconds of a short clip overshoot it).
            "-crf",
            str(CRF),
            "-maxrate",
            str(bitrate),
            "-bufsize",
            str(bitrate // 2),
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-an",
            "-f",
            "mp4",
            str(target),
        ],
        failure="The animation could not be re-encoded.",
    )
    return target


def _file_size(path: Path) -> int:
    """Return a file's size, or raise MediaError if it is missing."""
    try:
        return path.stat().st_size
    except OSError as exc:
        log.warning("media file %s is unreadable: %s", path, exc)
        raise MediaError("The animation file is missing.") from None


class _FrameCount:
    """Reads FFmpeg's framecrc output: time base, picture size, frames and their span."""

    def __init__(self) -> None:
        self.time_base = Fraction(0)
        self.width = 0
        self.height = 0
        self.frames = 0
        self._first: int | None = None
        self._end = 0

    @property
    def span(self) -> int:
        """Time from the first frame to the end of the last, in time-base units."""
        return self._end - (self._first or 0)

    def feed(self, line: str) -> None:
        """Take one line of framecrc output."""
        if line.startswith("#tb 0:"):
            self.time_base = Fraction(line.split(":", 1)[1].strip())
        elif line.startswith("#dimensions 0:"):
            width, _, height = line.split(":", 1)[1].strip().partition("x")
            self.width, self.height = int(width), int(height)
        elif line and not line.startswith("#"):
            fields = [field.strip() for field in line.split(",")]
            if len(fields) < 4 or fields[0] != "0":
                return
            pts, duration = int(fields[2]), int(fields[3])
            self.frames += 1
            self._first = pts if self._first is None else min(self._first, pts)
            self._end = max(self._end, pts + max(duration, 0))


@functools.cache
def _ffmpeg() -> str:
    """Locate the FFmpeg executable shipped in the imageio-ffmpeg wheel."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _input(path: Path) -> list[str]:
    """Arguments that open a local file as input and nothing else."""
    # `file:` stops a name like "http:x" or "-x" being read as a URL or an option.
    return [
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        _INPUT_FORMATS,
        "-i",
        f"file:{path.resolve()}",
    ]


async def _run(
    args: list[str],
    *,
    failure: str,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Run FFmpeg with a time limit; kill it on time-out or cancel; raise MediaError on failure."""
    timeout = FFMPEG_TIMEOUT  # read at each call, so a deployment or a test can change it
    executable = await asyncio.to_thread(_ffmpeg)  # the first call checks the binary: blocking
    command = [executable, "-hide_banner", "-nostdin", "-nostats", "-v", "error", "-y", *args]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if on_line else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr: deque[str] = deque()
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(
                _read_lines(process.stdout, on_line),
                _read_tail(process.stderr, stderr),
                process.wait(),
            )
    except BaseException as exc:
        # Time-out, cancel or a parse error: never leave FFmpeg running.
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(exc, TimeoutError):
            log.warning("ffmpeg took over %.0f s and was stopped: %s", timeout, _show(args))
            raise MediaError(f"{failure} It took too long.") from None
        if isinstance(exc, ValueError):
            log.warning("unexpected ffmpeg output from %s: %s", _show(args), exc)
            raise MediaError(failure) from None
        raise
    if process.returncode != 0:
        log.warning(
            "ffmpeg exited with %s: %s\n%s", process.returncode, _show(args), "".join(stderr)
        )
        raise MediaError(failure)
    if stderr:
        log.debug("ffmpeg said: %s", "".join(stderr))


async def _read_lines(
    stream: asyncio.StreamReader | None, on_line: Callable[[str], None] | None
) -> None:
    """Pass each line of a stream to `on_line`."""
    if stream is None or on_line is None:
        return
    async for raw in stream:
        on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))


async def _read_tail(stream: asyncio.StreamReader | None, tail: deque[str]) -> None:
    """Keep the last few thousand characters of a stream, so a chatty failure stays bounded."""
    if stream is None:
        return
    kept = 0
    while chunk := await stream.read(4096):
        text = chunk.decode("utf-8", "replace")
        tail.append(text)
        kept += len(text)
        while kept > _STDERR_TAIL and len(tail) > 1:
            kept -= len(tail.popleft())


def _show(args: list[str]) -> str:
    """Render FFmpeg arguments for the log."""
    return " ".join(args if len(args) < 40 else [*args[:40], "..."])
