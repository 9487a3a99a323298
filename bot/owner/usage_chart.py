"""The /animate-usage chart: GPU seconds per day as bars, the daily budget, requests per day.

Drawn with matplotlib's Agg backend (no display) on a figure of its own, in a worker thread:
a render takes a few hundred milliseconds of CPU that the event loop must not wait through.
The card has its own opaque background, so it reads the same in Discord's dark and light
themes.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bot.owner.quotas import DAY, USAGE_DAYS, UsageReport

WIDTH_PX, HEIGHT_PX, DPI = 960, 480, 120
BACKGROUND = "#2b2d31"  # Discord's embed grey: a card that sits well on either theme
TEXT = "#e3e5e8"
GRID = "#4e5058"
BAR = "#5865f2"  # blurple
BUDGET = "#f0b232"  # amber
REQUESTS = "#57f287"  # green


def render_usage_chart(report: UsageReport, *, days: int = USAGE_DAYS) -> bytes | None:
    """A PNG of the report's last `days` days; None when nothing was used in them."""
    if report.predictions == 0:
        return None
    first_day = int(report.since // DAY)
    gpu = [0.0] * days
    requests = [0] * days
    for day in report.days:
        index = int(day.day_start // DAY) - first_day
        if 0 <= index < days:
            gpu[index] = day.gpu_seconds
            requests[index] = day.predictions
    positions = list(range(days))

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor=BACKGROUND)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_facecolor(BACKGROUND)
    axes.bar(positions, gpu, width=0.7, color=BAR, label="GPU seconds", zorder=2)
    if report.daily_budget:
        axes.axhline(
            report.daily_budget,
            color=BUDGET,
            linestyle="--",
            linewidth=1.5,
            label=f"daily budget ({report.daily_budget:g} s)",
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
        ncols=3,
        fontsize=8,
        frameon=False,
        labelcolor=TEXT,
    )
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", facecolor=BACKGROUND)
    return out.getvalue()


async def usage_chart(report: UsageReport) -> bytes | None:
    """Render the chart in a worker thread, leaving the event loop free meanwhile."""
    return await asyncio.to_thread(render_usage_chart, report)


def _day_label(moment: float) -> str:
    """A short UTC date such as `Nov 03`."""
    return datetime.fromtimestamp(moment, UTC).strftime("%b %d")
