"""Words for server owners and members: the settings, the spending, a member's history."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from bot.core.jobs import Job, JobStatus
from bot.owner.guild_settings import GuildSettings
from bot.owner.quotas import Prices, UsageReport
from bot.owner.setting_specs import LIST_SETTINGS, SETTINGS
from bot.storage.base import GpuSeconds
from bot.texts.formatting import CONTENT_LIMIT, DESCRIPTION_LIMIT, quote, shorten

CHANGED_MARK = " ✱"
MEMBERS_SHOWN = 15


CHANNELS_SHOWN = 20


def settings_text(
    settings: GuildSettings,
    changed: Collection[str],
    *,
    limit: int = CONTENT_LIMIT,
    deleted_channels: Collection[int] = (),
) -> str:
    """The effective settings of a server, marking those its owner changed, within `limit`.

    Listed channels in `deleted_channels` are marked as deleted (they no longer count).
    """
    text = _settings_text(settings, changed, limit, deleted_channels)
    # Every part is bounded above; this only guards the sum against a future setting.
    return shorten(text, limit)


def _settings_text(
    settings: GuildSettings, changed: Collection[str], limit: int, deleted: Collection[int]
) -> str:
    """The settings text, with long lists cut to what fits."""
    lines = [
        "⚙️ **Animation settings for this server** (✱ changed here; the rest are the bot's defaults)"
    ]

    def mark(name: str) -> str:
        return CHANGED_MARK if name in changed else ""

    channels = (
        ", ".join(
            f"<#{c}> (deleted)" if c in deleted else f"<#{c}>"
            for c in settings.channel_ids[:CHANNELS_SHOWN]
        )
        if settings.channel_ids
        else "every channel"
    )
    if len(settings.channel_ids) > CHANNELS_SHOWN:
        channels += f" …and {len(settings.channel_ids) - CHANNELS_SHOWN} more"
    if settings.channel_ids and all(c in deleted for c in settings.channel_ids):
        channels += "; none of them exists any more, so /animate works in every channel"
    lines.append(f"**{LIST_SETTINGS['channel_ids']}**: {channels}{mark('channel_ids')}")
    for name, spec in SETTINGS.items():
        value = spec.show(getattr(settings, name))
        lines.append(f"**{spec.label}** (`{name}`): {quote(value, 600)}{mark(name)}")
    header = f"**{LIST_SETTINGS['blocked_patterns']}**{mark('blocked_patterns')}: "
    if not settings.blocked_patterns:
        lines.append(header + "none")
        return "\n".join(lines)
    text = "\n".join(lines)
    shown: list[str] = []
    for index, pattern in enumerate(settings.blocked_patterns):
        left = len(settings.blocked_patterns) - index
        candidate = ", ".join([*shown, quote(pattern, 100)])
        more = f" …and {left - 1} more" if left > 1 else ""
        if len(text) + 1 + len(header) + len(candidate) + len(more) + 20 > limit:
            return f"{text}\n{header}{', '.join(shown)} …and {left} more"
        shown.append(quote(pattern, 100))
    return f"{text}\n{header}{', '.join(shown)}"


def _day(unix: float) -> str:
    """A UTC date as people write it."""
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%d")


def _cost(dollars: float) -> str:
    """An estimated cost in dollars."""
    return f"${dollars:,.2f}"


def _spent(gpu: GpuSeconds, prices: Prices, *, split: bool, row: bool = False) -> str:
    """GPU seconds and their estimated cost; per backend kind when `split`.

    A `row` of the per-day or per-member lists is terse (the first lines say what is free),
    so that 30 days and 15 members fit in one embed.
    """
    if not split:
        return f"{gpu.total:,.1f} s · {_cost(prices.cost(gpu))}"
    replicate_cost = _cost(gpu.replicate * prices.replicate)
    own_cost = "" if prices.own_is_free else _cost(gpu.own * prices.own)
    if row:
        own = f"own {gpu.own:,.1f} s" + (f" {own_cost}" if own_cost else "")
        return f"Replicate {gpu.replicate:,.1f} s {replicate_cost} · {own}"
    own = f"≈ {own_cost}" if own_cost else "(free)"
    return f"Replicate {gpu.replicate:,.1f} s ≈ {replicate_cost} · own GPUs {gpu.own:,.1f} s {own}"


def _price_note(prices: Prices, *, split: bool) -> str:
    """How the cost is estimated, for the report's first line."""
    note = f"cost estimated at ${prices.replicate:g} per GPU second"
    if not split:
        return note
    own = "nothing" if prices.own_is_free else f"${prices.own:g}"
    return f"{note} on Replicate and {own} on your own GPUs"


def _today_text(report: UsageReport, *, split: bool) -> str:
    """Today's GPU seconds against the daily budget (which counts only paid seconds)."""
    today, budget = report.today, report.daily_budget
    if not budget:
        if not split:
            return f"Today: {today.total:,.1f} GPU seconds (no daily budget)."
        spent = _spent(today, report.prices, split=True)
        return f"Today: {today.total:,.1f} GPU seconds ({spent}; no daily budget)."
    of_budget = (
        f"{report.today_budgeted:,.1f} of the {budget:g} GPU seconds the server may use per day"
    )
    if not split:
        return f"Today: {of_budget}."
    spent = _spent(today, report.prices, split=True)
    if report.prices.own_is_free:
        return f"Today: {spent}. The daily budget counts only paid seconds: {of_budget}."
    return f"Today: {of_budget} ({spent})."


def usage_text(report: UsageReport) -> str:
    """A server's spending: totals, today against the budget, per day, per member.

    With work on the bot's own GPUs in the period, every figure is split by backend kind.
    """
    prices, split = report.prices, report.uses_own_gpus
    gpu = report.gpu
    total = (
        f"Total: {report.predictions} prediction{'' if report.predictions == 1 else 's'} · "
        f"{gpu.total:,.1f} GPU seconds · "
        f"≈ {_cost(prices.cost(gpu))}"
    )
    if split:
        total += f": {_spent(gpu, prices, split=True)}"
    lines = [
        f"**Since {_day(report.since)}** (days are UTC; GPU time as the prediction API "
        f"reports it; {_price_note(prices, split=split)})",
        total,
        _today_text(report, split=split),
    ]
    if not report.days:
        lines.append("No predictions in this period.")
        return "\n".join(lines)
    lines.append("\n**Per day**")
    lines += [
        f"{_day(day.day_start)} · {day.predictions} · "
        f"{_spent(day.gpu, prices, split=split, row=True)}"
        for day in reversed(report.days)
    ]
    lines.append("\n**Per member**")
    for member in report.members[:MEMBERS_SHOWN]:
        lines.append(
            f"<@{member.member_id}> · {member.predictions} · "
            f"{_spent(member.gpu, prices, split=split, row=True)}"
        )
    if len(report.members) > MEMBERS_SHOWN:
        lines.append(f"…and {len(report.members) - MEMBERS_SHOWN} more members.")
    text = "\n".join(lines)
    # 30 days and 15 members stay far below an embed's limit; cut visibly if not.
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


_STATUS_WORDS = {
    JobStatus.QUEUED: "waiting",
    JobStatus.SUBMITTED: "starting",
    JobStatus.RUNNING: "generating",
    JobStatus.DELIVERING: "uploading",
    JobStatus.DONE: "done",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "canceled",
}
HISTORY_PROMPT_LIMIT = 120


def history_text(jobs: list[Job]) -> str:
    """A page of a member's own requests, numbered to match the Run again buttons."""
    if not jobs:
        return "You have no animations in this server yet: start one with `/animate`."
    lines = ["🕘 **Your animations in this server**, newest first"]
    for number, job in enumerate(jobs, start=1):
        lines.append(
            f"**{number}.** {quote(job.request.prompt, HISTORY_PROMPT_LIMIT)} · seed "
            f"`{job.seed}` · {job.request.steps} steps · {_STATUS_WORDS[job.status]} · "
            f"<t:{int(job.created_at)}:R>"
        )
    return "\n".join(lines)
