"""The /animate-usage chart: what its pixels show, and that drawing it leaves the loop free."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest
from matplotlib import colors
from matplotlib.image import imread

from bot.owner.quotas import DAY, DayUsage, Prices, UsageReport
from bot.owner.usage_chart import (
    BAR,
    HEIGHT_PX,
    OWN_BAR,
    RENDER_THREAD_NAME,
    WIDTH_PX,
    render_usage_chart,
    usage_chart,
)
from bot.storage.base import GpuSeconds

T = TypeVar("T")
TODAY = 1_796_083_200.0  # a UTC midnight
SINCE = TODAY - 29 * DAY


def _report(
    *days: tuple[int, int, float], budget: float = 0, own: dict[int, float] | None = None
) -> UsageReport:
    """A report with (day index from the first, requests, Replicate's GPU seconds) per used
    day, and the seconds on own GPUs of some days."""
    own = own or {}
    return UsageReport(
        since=SINCE,
        days=tuple(
            DayUsage(SINCE + i * DAY, count, GpuSeconds(gpu, own.get(i, 0.0)))
            for i, count, gpu in days
        ),
        members=(),
        prices=Prices(replicate=0.000725),
        today=GpuSeconds(),
        daily_budget=budget,
    )


def _is(png: bytes, colour: str) -> np.ndarray:
    """Where the image has exactly `colour`, as a boolean array of rows by columns."""
    pixels = (imread(io.BytesIO(png))[:, :, :3] * 255).round().astype(int)
    wanted = np.array([round(c * 255) for c in colors.to_rgb(colour)])
    return np.all(pixels == wanted, axis=2)


def _bars(png: bytes) -> list[tuple[int, int]]:
    """Each bar standing on the x axis, left to right: (middle column, height in pixels)."""
    is_bar = _is(png, BAR)
    rows, _ = np.nonzero(is_bar)
    baseline = rows.max()
    # Bars stand on the baseline; the legend's swatch of the same colour does not.
    standing = [
        col
        for col in range(is_bar.shape[1])
        if is_bar[:, col].any() and np.nonzero(is_bar[:, col])[0].max() >= baseline - 1
    ]
    runs: list[list[int]] = []
    for col in standing:
        if runs and col == runs[-1][-1] + 1:
            runs[-1].append(col)
        else:
            runs.append([col])
    result = []
    for run in runs:
        middle = run[len(run) // 2]
        filled = np.nonzero(is_bar[:, middle])[0]
        result.append((middle, int(baseline - filled.min() + 1)))
    return result


def test_the_bars_show_each_days_gpu_seconds() -> None:
    png = render_usage_chart(_report((5, 4, 100.0), (20, 1, 25.0), budget=150))
    assert png is not None and png.startswith(b"\x89PNG")
    image = imread(io.BytesIO(png))
    assert image.shape[:2] == (HEIGHT_PX, WIDTH_PX)
    bars = _bars(png)
    assert len(bars) == 2, bars
    (left, tall), (right, short) = bars
    assert left < right  # day 5 before day 20
    assert tall / short == pytest.approx(4.0, rel=0.05)
    # Days 5 and 20 sit 15 days apart: the columns say so too.
    assert (right - left) / 15 > 10


def test_own_gpus_seconds_stack_on_the_paid_ones() -> None:
    png = render_usage_chart(
        _report((5, 4, 100.0), (20, 1, 25.0), budget=200, own={5: 50.0, 20: 100.0})
    )
    assert png is not None
    is_own = _is(png, OWN_BAR)
    bars = _bars(png)
    assert len(bars) == 2, bars  # the paid part stands on the axis, as without own GPUs
    (left, paid_left), (right, paid_right) = bars
    assert paid_left / paid_right == pytest.approx(4.0, rel=0.05)
    rows = _is(png, BAR)
    baseline = int(np.nonzero(rows[:, left])[0].max())
    heights = []
    for column, paid in ((left, paid_left), (right, paid_right)):
        own_rows = np.nonzero(is_own[:, column])[0]
        span = int(own_rows.max() - own_rows.min() + 1)
        assert own_rows.size >= 0.9 * span  # one block, crossed only by the lines drawn over it
        # Right on top of the paid part: at most an anti-aliased row between them.
        assert baseline - paid - own_rows.max() <= 2
        heights.append(span)
    assert heights[0] / paid_left == pytest.approx(0.5, rel=0.08)
    assert heights[1] / paid_right == pytest.approx(4.0, rel=0.05)


def test_without_own_gpus_nothing_is_drawn_in_their_colour() -> None:
    png = render_usage_chart(_report((5, 4, 100.0), (20, 1, 25.0)))
    assert png is not None and not _is(png, OWN_BAR).any()


def test_no_chart_before_any_usage() -> None:
    assert render_usage_chart(_report()) is None


async def _loop_ticks_during(work: Callable[[], Awaitable[T]]) -> tuple[int, float, T]:
    """Run `work` while a probe ticks every 2 ms; return the ticks it got in, the work's
    duration, and its result. A render that blocks the loop lets no tick in at all."""
    ticks = 0
    done = asyncio.Event()

    async def probe() -> None:
        """Tick as often as the loop lets it."""
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    before, started = ticks, time.perf_counter()
    try:
        result = await work()
    finally:
        elapsed = time.perf_counter() - started
        got = ticks - before
        done.set()
        await task
    return got, elapsed, result


async def test_the_chart_is_drawn_without_blocking_the_event_loop() -> None:
    report = _report(*((i, 1 + i % 3, 10.0 * i) for i in range(30)), budget=200)

    async def on_the_loop() -> bytes | None:
        """The same render, called directly: what the loop would suffer without a thread."""
        return render_usage_chart(report)

    blocked_ticks, blocked_for, _ = await _loop_ticks_during(on_the_loop)
    assert blocked_ticks == 0 and blocked_for > 0.02  # the probe can tell a blocked loop
    ticks, took, png = await _loop_ticks_during(lambda: usage_chart(report))
    assert png is not None and len(_bars(png)) == 29  # day 0 used 0 GPU seconds
    # The loop kept running all along: at least one tick in every 20 ms of the render.
    assert ticks >= took / 0.02, (ticks, took)


async def test_charts_are_drawn_on_one_thread_of_their_own_not_the_default_pool() -> None:
    report = _report((5, 4, 100.0), budget=150)
    pngs = await asyncio.gather(*(usage_chart(report) for _ in range(3)))
    assert all(png is not None for png in pngs)
    drawing = [t for t in threading.enumerate() if t.name.startswith(RENDER_THREAD_NAME)]
    assert len(drawing) == 1  # one worker, reused by every render
