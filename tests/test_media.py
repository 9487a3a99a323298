"""Media: probing real outputs, GIF conversion, fitting an upload limit, file names."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import pytest

from bot import media
from bot.media import MediaError, VideoInfo, ffmpeg

DATA = Path(__file__).parent / "data"
SAMPLE_MP4 = DATA / "animatediff-sample.mp4"
SAMPLE_GIF = DATA / "animatediff-sample.gif"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(*args: str) -> str:
    """Run the bundled FFmpeg directly (not through the code under test); return its log."""
    done = subprocess.run(
        [FFMPEG, "-hide_banner", "-nostdin", "-y", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


def _psnr(candidate: Path, reference: Path) -> float:
    """Mean PSNR in dB of a video's frames against a reference's."""
    log = _ffmpeg("-i", str(candidate), "-i", str(reference), "-lavfi", "psnr", "-f", "null", "-")
    found = re.search(r"average:([0-9.]+)", log)
    assert found, log
    return float(found.group(1))


def _loop_count(gif: Path) -> int | None:
    """Read the loop count from a GIF's NETSCAPE2.0 application extension, if it has one."""
    data = gif.read_bytes()
    marker = b"\x21\xff\x0bNETSCAPE2.0\x03\x01"
    at = data.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    return int.from_bytes(data[start : start + 2], "little")


def _names(folder: Path) -> list[str]:
    """Names of the files in a folder, sorted."""
    return sorted(path.name for path in folder.iterdir())


def _ffmpeg_children() -> list[int]:
    """Ids of FFmpeg processes that are children of this test process."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and name.startswith("ffmpeg"):
            children.append(int(entry.name))
    return children


@pytest.fixture(scope="module")
def sample_gif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample MP4 converted once by to_gif, shared by the GIF tests."""
    target = tmp_path_factory.mktemp("gif") / "sample.gif"
    return asyncio.run(media.to_gif(SAMPLE_MP4, target))


@pytest.fixture(scope="module")
def large_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A noisy 16:9 clip of several MB: 48 frames at 24 fps, nearly lossless."""
    target = tmp_path_factory.mktemp("large") / "large.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=384x216:rate=24:duration=2",
        "-vf", "noise=alls=60:allf=t+u",
        "-c:v", "libx264", "-preset", "ultrafast", "-qp", "8", "-pix_fmt", "yuv420p",
        str(target),
    )  # fmt: skip
    assert target.stat().st_size > 3_000_000
    return target


# Probe -----------------------------------------------------------------------------------------


async def test_probe_reads_the_real_mp4_output() -> None:
    info = await media.probe(SAMPLE_MP4)
    assert (info.width, info.height, info.frames) == (512, 512, 48)
    assert info.fps == pytest.approx(300 / 13, rel=1e-3)  # 23.08 fps, 2.08 s
    assert info.duration == pytest.approx(2.08, abs=0.01)
    assert info.size_bytes == SAMPLE_MP4.stat().st_size


async def test_probe_reads_the_real_gif_output() -> None:
    info = await media.probe(SAMPLE_GIF)
    assert (info.width, info.height, info.frames) == (512, 512, 16)
    assert info.fps == pytest.approx(100 / 13, rel=1e-3)  # 13 cs a frame
    assert info.duration == pytest.approx(2.08, abs=1e-6)


async def test_unreadable_input_raises_a_readable_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(4000))
    with caplog.at_level(logging.WARNING, logger="bot.media"), pytest.raises(MediaError) as err:
        await media.probe(garbage)
    assert str(err.value) == "The animation file could not be read."
    assert "ffmpeg exited" in caplog.text  # FFmpeg's own words go to the log only


async def test_truncated_and_missing_inputs_raise_media_error(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(SAMPLE_MP4.read_bytes()[:5000])
    with pytest.raises(MediaError):
        await media.fit_to_limit(truncated, 1000, tmp_path)
    with pytest.raises(MediaError):
        await media.probe(tmp_path / "nowhere.mp4")


async def test_a_playlist_disguised_as_output_is_not_followed(tmp_path: Path) -> None:
    # Without a demuxer whitelist FFmpeg would open the local file this playlist names.
    playlist = tmp_path / "output.m3u8"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:2,\n{SAMPLE_MP4.resolve()}\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(MediaError):
        await media.probe(playlist)


# GIF -------------------------------------------------------------------------------------------


async def test_gif_keeps_frames_size_and_rate(sample_gif: Path) -> None:
    source = await media.probe(SAMPLE_MP4)
    gif = await media.probe(sample_gif)
    assert (gif.width, gif.height, gif.frames) == (source.width, source.height, source.frames)
    # GIF delays are whole centiseconds: the clip keeps its length and mean rate.
    assert gif.duration == pytest.approx(source.duration, abs=0.02)
    assert gif.fps == pytest.approx(source.fps, rel=0.01)


def test_gif_loops_forever(sample_gif: Path) -> None:
    assert sample_gif.read_bytes()[:6] == b"GIF89a"
    assert _loop_count(sample_gif) == 0


def test_gif_palette_beats_the_default_conversion(sample_gif: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.gif"
    _ffmpeg("-i", str(SAMPLE_MP4), str(plain))  # FFmpeg's fixed palette
    ours, default = _psnr(sample_gif, SAMPLE_MP4), _psnr(plain, SAMPLE_MP4)
    assert ours > default + 6, (ours, default)


# Fitting ---------------------------------------------------------------------------------------


async def test_a_fitting_file_is_returned_untouched(tmp_path: Path) -> None:
    before = SAMPLE_MP4.read_bytes()
    assert await media.fit_to_limit(SAMPLE_MP4, len(before), tmp_path) == SAMPLE_MP4
    assert await media.fit_to_limit(SAMPLE_GIF, 10 * 2**20, tmp_path, fmt="gif") == SAMPLE_GIF
    assert SAMPLE_MP4.read_bytes() == before
    assert _names(tmp_path) == []


async def _assert_same_clip(result: Path, source: VideoInfo, limit: int) -> VideoInfo:
    """Check a fitted file: within the limit, every frame, same rate and aspect ratio."""
    info = await media.probe(result)
    assert info.size_bytes <= limit
    assert info.frames == source.frames
    assert info.fps == pytest.approx(source.fps, rel=0.01)
    assert info.width / info.height == pytest.approx(source.width / source.height, rel=0.02)
    return info


async def test_a_large_video_is_reencoded_under_the_limit(
    large_video: Path, tmp_path: Path
) -> None:
    source = await media.probe(large_video)
    limit = source.size_bytes // 20
    result = await media.fit_to_limit(large_video, limit, tmp_path)
    assert result is not None and result.parent == tmp_path
    info = await _assert_same_clip(result, source, limit)
    assert (info.width, info.height) == (source.width, source.height)  # bitrate was enough
    assert result.read_bytes()[4:8] == b"ftyp"
    assert _names(tmp_path) == [result.name]  # failed attempts removed


async def test_a_tight_limit_shrinks_the_picture(large_video: Path, tmp_path: Path) -> None:
    source = await media.probe(large_video)
    limit = 30_000
    result = await media.fit_to_limit(large_video, limit, tmp_path)
    assert result is not None
    info = await _assert_same_clip(result, source, limit)
    assert info.width < source.width
    assert info.width % 2 == 0 and info.height % 2 == 0


async def test_a_gif_over_the_limit_is_made_smaller(tmp_path: Path) -> None:
    source = await media.probe(SAMPLE_MP4)
    limit = 1_000_000  # the full-size GIF is about 2 MB
    result = await media.fit_to_limit(SAMPLE_MP4, limit, tmp_path, fmt="gif")
    assert result is not None
    info = await _assert_same_clip(result, source, limit)
    assert info.width < source.width
    assert _loop_count(result) == 0


async def test_a_gif_output_can_be_posted_as_mp4(tmp_path: Path) -> None:
    source = await media.probe(SAMPLE_GIF)
    result = await media.fit_to_limit(SAMPLE_GIF, 10 * 2**20, tmp_path, fmt="mp4")
    assert result is not None and result.read_bytes()[4:8] == b"ftyp"
    info = await _assert_same_clip(result, source, 10 * 2**20)
    assert (info.width, info.height) == (512, 512)


async def test_an_impossible_limit_gives_none(large_video: Path, tmp_path: Path) -> None:
    assert await media.fit_to_limit(large_video, 2048, tmp_path) is None
    assert await media.fit_to_limit(SAMPLE_MP4, 2048, tmp_path, fmt="gif") is None
    assert _names(tmp_path) == []


async def test_a_slow_conversion_is_stopped(
    monkeypatch: pytest.MonkeyPatch, large_video: Path, tmp_path: Path
) -> None:
    await media.probe(large_video)  # the one-off check of the binary is not what we time
    monkeypatch.setattr(ffmpeg, "FFMPEG_TIMEOUT", 0.2)
    started = time.monotonic()
    with pytest.raises(MediaError, match="took too long"):
        await media.to_gif(large_video, tmp_path / "slow.gif")  # a few seconds of work
    assert time.monotonic() - started < 1.5  # killed, not waited for
    assert _ffmpeg_children() == []


async def test_a_canceled_conversion_kills_ffmpeg(large_video: Path, tmp_path: Path) -> None:
    await media.probe(large_video)  # the one-off check of the binary is not what we cancel
    task = asyncio.create_task(media.to_gif(large_video, tmp_path / "canceled.gif"))
    for _ in range(200):  # wait until FFmpeg is running
        await asyncio.sleep(0.01)
        if _ffmpeg_children():
            break
    assert _ffmpeg_children()
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0  # killed, not waited for
    assert _ffmpeg_children() == []


async def test_a_canceled_fit_is_observed_as_canceled_not_failed(
    large_video: Path, tmp_path: Path
) -> None:
    await media.probe(large_video)
    observed: list[tuple[str, str]] = []
    task = asyncio.create_task(
        media.fit_to_limit(
            large_video, 4096, tmp_path, fmt="gif", observe=lambda f, o, _s: observed.append((f, o))
        )
    )
    for _ in range(200):  # wait until FFmpeg is running
        await asyncio.sleep(0.01)
        if _ffmpeg_children():
            break
    assert _ffmpeg_children()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert observed == [("gif", "canceled")]


# Upload ----------------------------------------------------------------------------------------


async def test_prepare_upload_names_and_types_the_file(tmp_path: Path) -> None:
    downloaded = tmp_path / "download"
    shutil.copy(SAMPLE_MP4, downloaded)
    work = tmp_path / "work"
    work.mkdir()
    mp4 = await media.prepare_upload(
        downloaded, fmt="mp4", limit_bytes=10 * 2**20, workdir=work, seed=1234,
        prompt="Cherry blossoms, falling",
    )  # fmt: skip
    assert mp4 == media.Upload(
        downloaded, "animate-1234-cherry-blossoms-falling.mp4", "video/mp4", 2162147
    )
    gif = await media.prepare_upload(
        downloaded, fmt="gif", limit_bytes=10 * 2**20, workdir=work, seed=5, prompt=""
    )
    assert gif is not None and gif.path.parent == work
    assert (gif.filename, gif.content_type) == ("animate-5.gif", "image/gif")
    assert gif.size_bytes == gif.path.stat().st_size <= 10 * 2**20
    assert not await media.prepare_upload(
        downloaded, fmt="mp4", limit_bytes=2048, workdir=work, seed=1, prompt="x"
    )


def test_upload_limit_prefers_the_interaction_then_the_guild() -> None:
    assert media.upload_limit(50 * 2**20, 25 * 2**20) == 50 * 2**20
    assert media.upload_limit(None, 25 * 2**20) == 25 * 2**20
    assert media.upload_limit(None, None) == 10 * 2**20
    assert media.upload_limit() == 10 * 2**20


# Names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "fmt", "expected"),
    [
        ("Cherry blossoms", "mp4", "animate-1234-cherry-blossoms.mp4"),
        ("  cherry   BLOSSOMS!!! ", "gif", "animate-1234-cherry-blossoms.gif"),
        ("Crème brûlée, Straße à Zürich", "mp4", "animate-1234-creme-brulee-strasse-a-zurich.mp4"),
        ("🌸🌸 sakura 🌸", "mp4", "animate-1234-sakura.mp4"),
        ("桜の花", "mp4", "animate-1234.mp4"),
        ("", "gif", "animate-1234.gif"),
        ("<@123456789> and <@&42> dance with <:blob:987654321> @everyone", "mp4",
         "animate-1234-and-dance-with-everyone.mp4"),
        ("../../etc/passwd", "mp4", "animate-1234-etc-passwd.mp4"),
        ("..\\..\\windows\\system32", "mp4", "animate-1234-windows-system32.mp4"),
        ("a.b.c", "mp4", "animate-1234-a-b-c.mp4"),
        ("one two three four five six seven eight nine ten", "mp4",
         "animate-1234-one-two-three-four-five-six-seven-eight.mp4"),
        ("x" * 100, "mp4", f"animate-1234-{'x' * 40}.mp4"),
        ("ﬁne ①", "mp4", "animate-1234-fine-1.mp4"),
    ],
)  # fmt: skip
def test_output_filename(prompt: str, fmt: str, expected: str) -> None:
    assert media.output_filename(1234, prompt, fmt) == expected


def test_output_filename_is_always_safe() -> None:
    for prompt in ["/", "\\", "..", 'a/b\\c:d*e?f"g<h>i|j', "\x00\n\t", "-" * 500]:
        name = media.output_filename(7, prompt, "mp4")
        assert re.fullmatch(r"animate-7(-[a-z0-9]+(-[a-z0-9]+)*)?\.mp4", name), name
        assert len(name) <= len("animate-7-.mp4") + media.SLUG_MAX


def test_output_filename_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError, match="webm"):
        media.output_filename(1, "x", "webm")
