"""The throughput benchmark's table: one column per strategy, ratios to the baseline."""

from __future__ import annotations

import argparse
import math
import os
import platform
from typing import Any

ROWS = (
    ("API requests per delivered job", "api_per_job", "{:.2f}"),
    ("  creates", "creates", "{:.2f}"),
    ("  ending requests (aimed polls + download)", "ending_per_job", "{:.2f}"),
    ("    aimed polls", "polls_ending", "{:.2f}"),
    ("    downloads", "downloads", "{:.2f}"),
    ("  progress polls", "polls_progress", "{:.2f}"),
    ("peak API requests a minute (not creates)", "api_peak_minute", "{:d}"),
    ("  budget", "api_budget", "{:d}"),
    ("peak creates a minute (limit 600)", "creates_peak_minute", "{:d}"),
    ("API requests beyond the account's limits (429s)", "api_429", "{:d}"),
    ("webhook deliveries taken per job", "pushes", "{:.2f}"),
    ("  refused", "pushes_refused", "{:d}"),
    ("delivery lag p50 (s)", "lag_p50", "{:.2f}"),
    ("delivery lag p95 (s)", "lag_p95", "{:.2f}"),
    ("delivery lag max (s)", "lag_max", "{:.2f}"),
    ("  of which the webhook's own trip, p95 (s)", "push_lag_p95", "{:.2f}"),
    ("Discord requests per job", "discord_total", "{:.2f}"),
    ("  acknowledgement", "discord_ack", "{:.2f}"),
    ("  status edits", "discord_edits", "{:.2f}"),
    ("  result", "discord_results", "{:.2f}"),
    ("Discord requests a second, peak", "discord_peak_second", "{:d}"),
    ("  p95", "discord_p95_second", "{:.0f}"),
    ("  status edits, peak a second", "edits_peak_second", "{:d}"),
    ("  budget", "discord_budget", "{:d}"),
    ("Discord requests beyond 50 a second (429s)", "discord_429", "{:d}"),
    ("staleness, running jobs' stage p50 (s)", "stale_running_p50", "{:.2f}"),
    ("  p95 (s)", "stale_running_p95", "{:.2f}"),
    ("staleness, running jobs' progress ticks p50 (s)", "stale_ticks_p50", "{:.2f}"),
    ("  p95 (s)", "stale_ticks_p95", "{:.2f}"),
    ("staleness, queued jobs' place p50 (s)", "stale_queued_p50", "{:.2f}"),
    ("  p95 (s)", "stale_queued_p95", "{:.2f}"),
    ("seconds ending requests waited for the API budget", "api_waited", "{:.1f}"),
    ("event-loop lag p99 (ms)", "loop_lag_p99_ms", "{:.1f}"),
    ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
    ("CPU seconds per 1,000 jobs", "cpu_per_1000", "{:.1f}"),
    ("start-up with the backlog (s)", "startup_s", "{:.2f}"),
    ("jobs delivered a second (unscaled)", "jobs_per_second", "{:.2f}"),
    ("jobs delivered", "delivered", "{:d}"),
)


def report(results: list[dict[str, Any]], options: argparse.Namespace) -> str:
    """A markdown table of every strategy, with ratios to the baseline."""
    for result in results:
        result["discord_total"] = (
            result["discord_ack"] + result["discord_edits"] + result["discord_results"]
        )
    base = next((r for r in results if r["strategy"] == "baseline"), None)
    lines = [
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {options.jobs} queued jobs "
        f"across {options.guilds} servers, {options.running} running, predictions 20-90 s, "
        f"time scale {options.time_scale:g}",
        "",
        "| | " + " | ".join(r["strategy"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, key, fmt in ROWS:
        cells = []
        for result in results:
            value = result[key]
            cell = "-" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
            if key == "api_per_job" and base is not None and result is not base:
                cell += f" ({result[key] / base[key]:.1%} of baseline)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SHARED_ROWS = (
    ("processes", "processes", "{:d}"),
    ("jobs delivered", "delivered", "{:d}"),
    ("wall time to --deliveries (real s)", "wall_s", "{:.1f}"),
    ("jobs delivered a second (unscaled)", "jobs_per_second", "{:.2f}"),
    ("API requests per delivered job (the fake's count)", "api_per_job", "{:.2f}"),
    ("  polls", "polls_per_job", "{:.2f}"),
    ("  downloads", "downloads_per_job", "{:.2f}"),
    ("Discord requests per delivered job (its own)", "discord_per_job", "{:.2f}"),
    ("all Discord requests / delivered jobs", "discord_all_per_job", "{:.2f}"),
    ("event-loop lag p99, 10 ms probe (ms)", "loop_lag_p99_ms", "{:.1f}"),
    ("event-loop lag p99, 100 ms probe (ms)", "loop_lag_100ms_p99_ms", "{:.1f}"),
    ("event-loop lag max (ms)", "loop_lag_max_ms", "{:.0f}"),
    ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
    ("CPU seconds", "cpu_s", "{:.1f}"),
    ("results delivered (each survivor's sink)", "delivered_per_process", "{:d}"),
    ("claim of 20 at the full backlog (ms)", "claim_ms", "{:.1f}"),
    ("mirror read of shard 0 (ms)", "queued_for_ms", "{:.1f}"),
    ("look for expired leases (ms)", "take_over_ms", "{:.1f}"),
    ("killed worker's unfinished jobs", "held_at_kill", "{:d}"),
    ("  with a prediction", "with_prediction", "{:d}"),
    ("take-over: a survivor holds every lease (s)", "takeover_lease_s", "{:.2f}"),
    ("take-over: a survivor launched every job (s)", "takeover_launch_s", "{:.2f}"),
    ("  jobs launched", "relaunched", "{:d}"),
    ("take-over: a survivor polled every prediction (s)", "takeover_poll_s", "{:.2f}"),
    ("  predictions polled", "polled_after", "{:d}"),
)


def _cell(value: Any, fmt: str) -> str:
    """One value, a list of them (one per process) joined with slashes, or '-'."""
    if isinstance(value, list):
        return " / ".join(_cell(v, fmt) for v in value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def report_shared(results: list[dict[str, Any]], options: argparse.Namespace) -> str:
    """A markdown table of runs on PostgreSQL; per-process figures as a / b / c."""
    lines = [
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {options.jobs} queued jobs "
        f"across {options.guilds} servers, {options.running} running in all, predictions "
        f"20-90 s, time scale {options.time_scale:g}, lease {options.lease_seconds:g} s (real)",
        "",
        "| | " + " | ".join(r["strategy"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, key, fmt in SHARED_ROWS:
        if not any(key in r for r in results):
            continue
        cells = [_cell(result.get(key), fmt) for result in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
