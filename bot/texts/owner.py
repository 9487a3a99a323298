"""Words for server owners and members: the settings, the spending, a member's history."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from bot.core.jobs import Job, JobStatus
from bot.owner.guild_settings import GuildSettings
from bot.owner.quotas import UsageReport
from bot.owner.setting_specs import LIST_SETTINGS, SETTINGS
from bot.texts.member import CONTENT_LIMIT, DESCRIPTION_LIMIT, quote, shorten

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


def _cost(seconds: float, price: float) -> str:
    """An estimated cost in dollars."""
    return f"${seconds * price:,.2f}"


def usage_text(report: UsageReport) -> str:
    """A server's spending: totals, today against the budget, per day, per member."""
    price = report.price_per_second
    lines = [
        f"**Since {_day(report.since)}** (days are UTC; GPU time as the prediction API "
        f"reports it; cost estimated at ${price:g} per GPU second)",
        f"Total: {report.predictions} predictions · {report.gpu_seconds:,.1f} GPU seconds · "
        f"≈ {_cost(report.gpu_seconds, price)}",
    ]
    if report.daily_budget:
        lines.append(
            f"Today: {report.today_gpu_seconds:,.1f} of the {report.daily_budget:g} GPU seconds "
            "the server may use per day."
        )
    else:
        lines.append(f"Today: {report.today_gpu_seconds:,.1f} GPU seconds (no daily budget).")
    if not report.days:
        lines.append("No predictions in this period.")
        return "\n".join(lines)
    lines.append("\n**Per day**")
    lines += [
        f"{_day(day.day_start)} · {day.predictions} · {day.gpu_seconds:,.1f} s · "
        f"{_cost(day.gpu_seconds, price)}"
        for day in reversed(report.days)
    ]
    lines.append("\n**Per member**")
    for member in report.members[:MEMBERS_SHOWN]:
        lines.append(
            f"<@{member.member_id}> · {member.predictions} · {member.gpu_seconds:,.1f} s · "
            f"{_cost(member.gpu_seconds, price)}"
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
