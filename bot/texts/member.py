"""Words the bot shows people: status lines and the result card, as plain data."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from bot.backends.cog.ids import server_of
from bot.core.jobs import (
    CHECKPOINTS,
    DEFAULT_OUTPUT_FORMAT,
    INVISIBLE,
    MOTION_MODULES,
    OUTPUT_FORMATS,
    GenerationRequest,
    Job,
)
from bot.core.progress import render_bar
from bot.core.redaction import scrub
from bot.core.reporter import JobResult, JobStatusUpdate, QueueEntry, Stage
from bot.media import DEFAULT_UPLOAD_LIMIT

# Discord's message and embed limits.
CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024
FIELD_NAME_LIMIT = 256
FOOTER_LIMIT = 2048
EMBED_TOTAL_LIMIT = 6000

FIELDS_LIMIT = 25
REASON_LIMIT = 1500

# Markdown, plus `<` and `@` so mentions, emoji and timestamps show as the text typed.
_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]()<@+-])")
# "1. text" at the start of a line would become a numbered list.
_LEADING_LIST = re.compile(r"^(\d+)\.")


def shorten(text: str, limit: int) -> str:
    """Cut text to a limit, visibly, with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)].rstrip() + "…"


def plain(text: str) -> str:
    """Escape markdown and mentions, and drop invisible direction and zero-width characters."""
    escaped = _MARKDOWN.sub(r"\\\1", INVISIBLE.sub("", text))
    return _LEADING_LIST.sub(r"\1\\.", escaped)


def quote(text: str, limit: int) -> str:
    """Show member text on one visible line, escaped, and shortened to `limit` once escaped."""
    flat = " ".join(INVISIBLE.sub("", text).split())
    cut = limit
    shown = plain(shorten(flat, cut))
    while len(shown) > limit:
        # Escaping adds at most one character per character: cut by half the overshoot.
        cut -= max(1, (len(shown) - limit + 1) // 2)
        shown = plain(shorten(flat, cut))
    return shown


def format_duration(seconds: float) -> str:
    """Write a duration like `42s` or `3m 05s`."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


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


def relative_time(unix: int) -> str:
    """A Discord timestamp that each reader sees as "in 3 minutes", in their own language."""
    return f"<t:{unix}:R>"


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


RERUN_NOTE = (
    "The first result expired at the animation service while the bot was away, so it was "
    "made again with the same input and seed: it is the same animation."
)
LOST_RERUN_NOTE = (
    "A first run was lost (its GPU server stopped or restarted, or the bot did before posting "
    "it), so it was made again with the same input and seed: it is the same animation."
)


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


def format_size(size: int) -> str:
    """A file size as people read it."""
    if size >= 2**20:
        return f"{size / 2**20:.1f} MiB".replace(".0 MiB", " MiB")
    return f"{max(1, round(size / 1024))} KiB"


def reproduce_command(request: GenerationRequest) -> str:
    """A slash command line that reproduces a request exactly."""
    parts = [f"prompt:{_command_value(request.prompt)}"]
    if request.negative_prompt:
        parts.append(f"negative_prompt:{_command_value(request.negative_prompt)}")
    parts += [
        f"model:{CHECKPOINTS[request.model]}",
        f"motion_module:{MOTION_MODULES[request.motion_module]}",
        f"steps:{request.steps}",
        f"guidance_scale:{request.guidance_scale:g}",
        f"seed:{request.seed}",
    ]
    if request.output_format != DEFAULT_OUTPUT_FORMAT:
        parts.append(f"format:{OUTPUT_FORMATS[request.output_format]}")
    return "/animate " + " ".join(parts)


def _command_value(text: str) -> str:
    """Keep member text from closing the code block it is shown in."""
    return " ".join(INVISIBLE.sub("", text).replace("`", "ˋ").split())


@dataclass(frozen=True, slots=True)
class CardField:
    """One named value on the result card."""

    name: str
    value: str
    inline: bool = True


@dataclass(frozen=True, slots=True)
class ResultCard:
    """The embed of a posted result, within Discord's limits."""

    title: str
    description: str
    fields: tuple[CardField, ...]
    footer: str

    def total_length(self) -> int:
        """Characters that count against Discord's 6000 total."""
        return (
            len(self.title)
            + len(self.description)
            + len(self.footer)
            + sum(len(f.name) + len(f.value) for f in self.fields)
        )


def result_card(job: Job, result: JobResult) -> ResultCard:
    """Build the card that goes with a result: every setting, the seed, the time taken."""
    request = job.request
    reproduce = "\n\n**Reproduce**\n```\n{code}\n```"
    # The code block is sized first so that shortening never cuts off its closing fence.
    code = shorten(reproduce_command(request), DESCRIPTION_LIMIT - 1200)
    code_part = reproduce.format(code=code)
    description = quote(request.prompt, DESCRIPTION_LIMIT - len(code_part)) + code_part
    fields = [
        CardField(
            "Negative prompt",
            quote(request.negative_prompt, FIELD_VALUE_LIMIT) or "none",
            inline=False,
        ),
        CardField("Model", request.model_name),
        CardField("Motion module", request.motion_module_name),
        CardField("Steps", str(request.steps)),
        CardField("Guidance", f"{request.guidance_scale:g}"),
        CardField("Seed", str(request.seed)),
        CardField("Time", _time_value(result)),
        CardField("Version", short_version(result.model_version or job.model_version)),
    ]
    if job.reruns:
        note = LOST_RERUN_NOTE if server_of(job.prediction_id) else RERUN_NOTE
        fields.append(CardField("Note", note, inline=False))
    fields = [
        CardField(shorten(f.name, FIELD_NAME_LIMIT), shorten(f.value, FIELD_VALUE_LIMIT), f.inline)
        for f in fields[:FIELDS_LIMIT]
    ]
    title = "Animation"
    used = len(title) + len(description) + sum(len(f.name) + len(f.value) for f in fields)
    # The prediction id comes from the API: whatever its length, the card stays within limits.
    prediction_id = " ".join(INVISIBLE.sub("", result.prediction_id).split())
    footer = shorten(
        f"{result_footer_prefix(job)}prediction {prediction_id}",
        min(FOOTER_LIMIT, EMBED_TOTAL_LIMIT - used),
    )
    return ResultCard(title=title, description=description, fields=tuple(fields), footer=footer)


def short_version(version: str | None) -> str:
    """A model version as people can compare it at a glance (Info shows it whole)."""
    if not version:
        return "unknown"
    owner_name, _, version_id = version.rpartition(":")
    short = f"{owner_name}:{version_id[:12]}" if owner_name else version_id[:12]
    # It comes from the API: shown inertly, like member text.
    return quote(short, FIELD_VALUE_LIMIT) or "unknown"


def settings_json(job: Job, *, fenced: bool = True) -> str:
    """Every setting of a job, with what made it, as JSON (in a code block when `fenced`)."""
    settings = {
        "input": job.request.to_api_input(),
        "format": job.request.output_format,
        "version": job.model_version,
        "prediction_id": job.prediction_id,
        "predict_time": job.predict_time,
        "command": reproduce_command(job.request),
    }
    text = json.dumps(settings, indent=2, ensure_ascii=False)
    if not fenced:
        return text
    # A backtick in a prompt must not close the code block; \u0060 is the same JSON.
    return "```json\n" + text.replace("`", "\\u0060") + "\n```"


def result_footer_prefix(job: Job) -> str:
    """The start of a result's footer, which names its job (how a restart finds the post)."""
    return f"Job {job.id} · "


def _time_value(result: JobResult) -> str:
    """Elapsed time, with the GPU time when the API reported it."""
    text = format_duration(result.elapsed)
    if result.predict_time is not None:
        text += f" ({result.predict_time:.1f}s on GPU)"
    return text
