"""Words members read about their requests: status lines, the queue view, how a job ended."""

from __future__ import annotations

from bot.backends.cog.ids import server_of
from bot.core.jobs import Job
from bot.core.progress import render_bar
from bot.core.redaction import scrub
from bot.core.reporter import JobStatusUpdate, QueueEntry, Stage
from bot.media import DEFAULT_UPLOAD_LIMIT
from bot.texts.formatting import CONTENT_LIMIT, REASON_LIMIT, format_size, quote, relative_time


def request_header(job: Job) -> str:
    """The first lines of a request's status message."""
    return f"🎬 Animation for <@{job.requester_id}>\n> {quote(job.request.prompt, 300)}"


def status_text(job: Job, update: JobStatusUpdate) -> str:
    """The status message of a pending job (and which GPU server runs it, on one of ours)."""
    return f"{request_header(job)}\n{stage_line(update)}{where_it_runs(job, update)}"


def where_it_runs(job: Job, update: JobStatusUpdate) -> str:
    """` · on gpu-a` while a job runs on one of the operator's Cog servers; else nothing."""
    server = server_of(job.prediction_id)
    running = update.stage in (Stage.STARTING, Stage.SAMPLING, Stage.RENDERING)
    return f" · on `{server}`" if server and running else ""


def stage_line(update: JobStatusUpdate) -> str:
    """One line that says where a pending job stands."""
    ready = "" if update.eta is None else f" · ready {relative_time(update.eta)}"
    match update.stage:
        case Stage.QUEUED:
            if update.position in (None, 1):
                return f"⏳ Queued: next in this server's queue{ready}."
            return f"⏳ Queued: #{update.position} in this server's queue{ready}."
        case Stage.STARTING:
            return f"🚀 Starting…{ready}"
        case Stage.SAMPLING:
            fraction = update.step / update.total if update.total else 0.0
            return (
                f"🎨 Generating `{render_bar(fraction)}` {update.step}/{update.total} steps "
                f"({fraction:.0%}){ready}"
            )
        case Stage.RENDERING:
            return f"🎞️ Rendering frames…{ready}"
        case Stage.UPLOADING:
            return "📤 Uploading…"
        case Stage.UNAVAILABLE:
            place = (
                "" if update.position is None else f" (#{update.position} in this server's queue)"
            )
            return (
                "⚠️ The animation service is unavailable right now; your request is waiting"
                f"{place} and will continue by itself."
            )
        case Stage.STORE_UNAVAILABLE:
            return (
                "⚠️ The bot's database is not answering; your request is safe and will go on "
                "when it is back."
            )


QUEUE_EMPTY_TEXT = (
    "Nothing is waiting or running in this server right now: start something with `/animate`."
)
QUEUE_PROMPT_LIMIT = 60
QUEUE_LINES = 20  # beyond this a queue view is hard to read anyway


def short_stage(update: JobStatusUpdate) -> str:
    """A few words for a job's stage in the queue view."""
    match update.stage:
        case Stage.QUEUED:
            return "waiting"
        case Stage.STARTING:
            return "starting"
        case Stage.SAMPLING:
            return f"generating, {update.step}/{update.total} steps"
        case Stage.RENDERING:
            return "rendering frames"
        case Stage.UPLOADING:
            return "uploading"
        case Stage.UNAVAILABLE:
            return "waiting for the animation service"
        case Stage.STORE_UNAVAILABLE:
            return "waiting for the bot's database"


def queue_text(
    entries: list[QueueEntry],
    viewer_id: int,
    limit: int = CONTENT_LIMIT,
    max_lines: int = QUEUE_LINES,
) -> str:
    """The queue view: running then waiting jobs, the viewer's own marked, within `limit`."""
    if not entries:
        return QUEUE_EMPTY_TEXT
    running = sum(1 for entry in entries if entry.position is None)
    header = f"🎬 **This server's queue**: {running} running, {len(entries) - running} waiting"
    lines = [header]
    length = len(header)
    for shown, entry in enumerate(entries):
        line = _queue_line(entry, viewer_id)
        left = len(entries) - shown - 1
        # Room for this line, and for the "more" line if others follow.
        more = len(_more_line(left)) + 1 if left else 0
        if shown == max_lines or length + 1 + len(line) + more > limit:
            lines.append(_more_line(len(entries) - shown))
            break
        lines.append(line)
        length += 1 + len(line)
    return "\n".join(lines)


def _queue_line(entry: QueueEntry, viewer_id: int) -> str:
    """One job in the queue view."""
    job, status = entry.job, entry.status
    place = "▶️" if entry.position is None else f"`#{entry.position}`"
    parts = [
        f"{place} <@{job.requester_id}>",
        quote(job.request.prompt, QUEUE_PROMPT_LIMIT),
        short_stage(status) + where_it_runs(job, status),
    ]
    if status.eta is not None:
        parts.append(f"ready {relative_time(status.eta)}")
    line = " · ".join(parts)
    return f"{line} **← you**" if job.requester_id == viewer_id else line


def _more_line(count: int) -> str:
    """The last line of a queue view cut short."""
    return f"…and {count} more."


def done_text(job: Job, *, by_dm: bool = False) -> str:
    """The status message once the result is posted."""
    if by_dm:
        return (
            f"{request_header(job)}\n✅ Done: the bot could not post it here, so it was sent "
            "to the requester by direct message."
        )
    return f"{request_header(job)}\n✅ Done: the animation is in the reply below."


def dm_delivery_text(job: Job, *, channel_gone: bool, attached: bool = True) -> str:
    """The note on a result sent by direct message because its channel refused it."""
    why = (
        "that channel no longer exists"
        if channel_gone
        else "the bot is no longer allowed to post there"
    )
    if attached:
        return f"🎬 Your animation from <#{job.channel_id}> is ready, but {why}, so here it is."
    return (
        f"🎬 Your animation from <#{job.channel_id}> is ready, but {why}, and it is over the "
        f"{format_size(DEFAULT_UPLOAD_LIMIT)} that a direct message can carry: here are its "
        "settings, so you can make it again."
    )


def failed_text(job: Job, reason: str) -> str:
    """The status message of a failed job; the reason is scrubbed of secrets and escaped."""
    header = request_header(job)
    room = min(REASON_LIMIT, CONTENT_LIMIT - len(header) - len("\n❌ "))
    return f"{header}\n❌ {quote(scrub(reason), room)}"


def canceled_text(job: Job) -> str:
    """The status message of a canceled job, with the reason recorded for it, if any."""
    header = request_header(job)
    if not job.error:
        return f"{header}\n🚫 Canceled."
    room = min(REASON_LIMIT, CONTENT_LIMIT - len(header) - len("\n🚫 "))
    return f"{header}\n🚫 {quote(job.error, room)}"


def too_large_text(job: Job, size: int, limit: int) -> str:
    """Say that a result cannot be attached in this server, even made smaller."""
    return (
        f"{request_header(job)}\n⚠️ The animation is {format_size(size)}, and even re-encoded "
        f"smaller it does not fit this server's {format_size(limit)} upload limit, so it "
        "cannot be attached."
    )
