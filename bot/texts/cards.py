"""The card posted with a result: every setting, the seed, how to make it again."""

from __future__ import annotations

import json
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
from bot.core.reporter import JobResult
from bot.texts.formatting import (
    DESCRIPTION_LIMIT,
    EMBED_TOTAL_LIMIT,
    FIELD_NAME_LIMIT,
    FIELD_VALUE_LIMIT,
    FIELDS_LIMIT,
    FOOTER_LIMIT,
    format_duration,
    quote,
    shorten,
)

RERUN_NOTE = (
    "The first result expired at the animation service while the bot was away, so it was "
    "made again with the same input and seed: it is the same animation."
)
LOST_RERUN_NOTE = (
    "A first run was lost (its GPU server stopped or restarted, or the bot did before posting "
    "it), so it was made again with the same input and seed: it is the same animation."
)


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
