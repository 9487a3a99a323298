"""The /animate-usage chart: GPU seconds per day as bars, the daily budget, requests per day.

With work on the bot's own GPUs, each bar stacks them on Replicate's (paid) seconds: the paid
part stands on the axis, where the budget line, which counts only paid seconds unless the own
GPUs have a price, reads against it.

Drawn with matplotlib's Agg backend (no display) on a figure of its own, in a worker thread:
a render takes a few hundred milliseconds of CPU that the event loop must not wait through.
The thread is the chart's own: on the default pool a burst of renders would hold up the
DNS lookups aiohttp runs there.
The card has its own opaque background, so it reads the same in Discord's dark and light
themes.
"""

from __future__ import annotations

import asyncio
import functools
import io
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bot.owner.quotas import DAY, USAGE_DAYS, UsageReport

WIDTH_PX, HEIGHT_PX, DPI = 960, 480, 120
BACKGROUND = "#2b2d31"  # Discord's embed grey: a card that sits well on either theme
TEXT = "#e3e5e8"
GRID = "#4e5058"
BAR = "#5865f2"  # blurple: Replicate (every bar, without own GPUs)
OWN_BAR = "#eb459e"  # fuchsia: the bot's own GPUs, stacked on top
BUDGET = "#f0b232"  # amber
REQUESTS = "#57f287"  # green
RENDER_THREAD_NAME = "usage-chart"


def render_usage_chart(report: UsageReport, *, days: int = USAGE_DAYS) -> bytes | None:
    """A PNG of the report's last `days` days; None when nothing was used in them."""
    if report.predictions == 0:
        return None
    first_day = int(report.since // DAY)
    paid = [0.0] * days
    own = [0.0] * days
    requests = [0] * days
    for day in report.days:
        index = int(day.day_start // DAY) - first_day
        if 0 <= index < days:
            paid[index] = day.gpu.replicate
            own[index] = day.gpu.own
            requests[index] = day.predictions
    positions = list(range(days))
    split = report.uses_own_gpus

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor=BACKGROUND)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_facecolor(BACKGROUND)
    label = "GPU seconds on Replicate" if split else "GPU seconds"
    axes.bar(positions, paid, width=0.7, color=BAR, label=label, zorder=2)
    if split:
        axes.bar(
            positions,
            own,
            bottom=paid,
            width=0.7,
            color=OWN_BAR,
            label="GPU seconds on own GPUs",
            zorder=2,
        )
    gpu = [p + o for p, o in zip(paid, own, strict=True)]
    if report.daily_budget:
        counted = " on Replicate" if split and report.prices.own_is_free else ""
        axes.axhline(
            report.daily_budget,
            color=BUDGET,
            linestyle="--",
            linewidth=1.5,
            label=f"daily budget ({report.daily_budget:g} s{counted})",
            zorder=3,
        )
    axes.set_ylim(0, max(*gpu, report.daily_budget) * 1.15 or 1)
    axes.set_ylabel("GPU seconds per day", color=TEXT)
    counts = axes.twinx()
    counts.plot(
        positions,
        requests,
        color=REQUESTS,
        marker="o",
        markersize=3,
        linewidth=1.2,
        label="requests",
        zorder=4,
    )
    counts.set_ylim(0, max(requests) * 1.15 or 1)
    counts.yaxis.set_major_locator(MaxNLocator(integer=True))
    counts.set_ylabel("requests per day", color=TEXT)

    labels = [_day_label(report.since + i * DAY) for i in positions]
    axes.set_xticks(positions[::5], labels[::5])
    axes.set_xlim(-0.6, days - 0.4)
    for each in (axes, counts):
        each.tick_params(colors=TEXT, labelsize=8)
        for spine in each.spines.values():
            spine.set_color(GRID)
    axes.grid(axis="y", color=GRID, linewidth=0.6, zorder=0)
    handles = axes.get_legend_handles_labels()
    more = counts.get_legend_handles_labels()
    # Above the plot, where it hides no bar.
    axes.legend(
        handles[0] + more[0],
        handles[1] + more[1],
        loc="lower left",
        bbox_to_anchor=(0.0, 1.01),
        ncols=4 if split else 3,
        fontsize=8,
        frameon=False,
        labelcolor=TEXT,
    )
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", facecolor=BACKGROUND)
    return out.getvalue()


async def usage_chart(report: UsageReport) -> bytes | None:
    """Render the chart on the chart's own thread, leaving the event loop free meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(
        _render_executor(), render_usage_chart, report
    )


@functools.cache  # made on first use, from the event loop's thread, then kept for good
def _render_executor() -> ThreadPoolExecutor:
    """The one worker thread that draws charts."""
    # One worker: renders are CPU-bound, so more threads would only share the cores.
    return ThreadPoolExecutor(1, thread_name_prefix=RENDER_THREAD_NAME)


def _day_label(moment: float) -> str:
    """A short UTC date such as `Nov 03`."""
    return datetime.fromtimestamp(moment, UTC).strftime("%b %d")
