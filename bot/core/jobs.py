"""Domain objects: what a member asks for and the job that carries it through the bot."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

MAX_SEED = 2_147_483_647
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 100, 25
MIN_GUIDANCE, MAX_GUIDANCE, DEFAULT_GUIDANCE = 1.0, 10.0, 7.5
MAX_PROMPT_LENGTH = 1000

# Checkpoint file names the model accepts as `path`, with the names people see.
CHECKPOINTS: dict[str, str] = {
    "toonyou_beta3.safetensors": "ToonYou beta 3",
    "lyriel_v16.safetensors": "Lyriel 1.6",
    "rcnzCartoon3d_v10.safetensors": "RCNZ Cartoon 3D",
    "majicmixRealistic_v5Preview.safetensors": "majicMIX realistic 5",
    "realisticVisionV40_v20Novae.safetensors": "Realistic Vision 4.0",
}
DEFAULT_CHECKPOINT = "toonyou_beta3.safetensors"

MOTION_MODULES: dict[str, str] = {
    "mm_sd_v14": "Motion v1.4",
    "mm_sd_v15": "Motion v1.5",
    "mm_sd_v15_v2": "Motion v1.5 v2",
}
DEFAULT_MOTION_MODULE = "mm_sd_v15_v2"

# How the result is posted; the model always makes an MP4, a GIF is converted from it.
OUTPUT_FORMATS: dict[str, str] = {"mp4": "MP4 video", "gif": "GIF (loops everywhere)"}
DEFAULT_OUTPUT_FORMAT = "mp4"


class InvalidRequest(ValueError):
    """A request setting is out of range; the message is meant for the member."""


# Characters that show nothing (zero-width, bidi controls): a prompt of only these is empty,
# and nothing the bot shows keeps them, so they cannot reorder or hide the text around them.
INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def random_seed(rng: random.Random | None = None) -> int:
    """Pick a seed in 1..2147483647 (0 means "pick one for me", so never 0)."""
    return (rng or _seed_rng).randint(1, MAX_SEED)


_seed_rng = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """The settings of one animation, complete enough to reproduce it."""

    prompt: str
    seed: int
    negative_prompt: str = ""
    model: str = DEFAULT_CHECKPOINT
    motion_module: str = DEFAULT_MOTION_MODULE
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    output_format: str = DEFAULT_OUTPUT_FORMAT  # not sent upstream: how the result is posted

    def __post_init__(self) -> None:
        """Refuse settings the model would reject, with a sentence a member understands."""
        if not INVISIBLE.sub("", self.prompt).strip():
            raise InvalidRequest("The prompt is empty; describe what you want to see.")
        if _SURROGATE.search(self.prompt) or _SURROGATE.search(self.negative_prompt):
            # Lone surrogates cannot be stored as UTF-8 (nor sent on as valid JSON text).
            raise InvalidRequest("The prompt contains characters that are not valid text.")
        if len(self.prompt) > MAX_PROMPT_LENGTH:
            raise InvalidRequest(f"The prompt is longer than {MAX_PROMPT_LENGTH} characters.")
        if len(self.negative_prompt) > MAX_PROMPT_LENGTH:
            raise InvalidRequest(
                f"The negative prompt is longer than {MAX_PROMPT_LENGTH} characters."
            )
        if self.model not in CHECKPOINTS:
            # The name is member-controlled text: keep it out of the sentence.
            raise InvalidRequest("Unknown model; choose one of the listed models.")
        if self.motion_module not in MOTION_MODULES:
            raise InvalidRequest("Unknown motion module; choose one of the listed motion modules.")
        if not MIN_STEPS <= self.steps <= MAX_STEPS:
            raise InvalidRequest(f"Steps must be between {MIN_STEPS} and {MAX_STEPS}.")
        if not (
            math.isfinite(self.guidance_scale)
            and MIN_GUIDANCE <= self.guidance_scale <= MAX_GUIDANCE
        ):
            raise InvalidRequest(
                f"Guidance scale must be between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g}."
            )
        if not 1 <= self.seed <= MAX_SEED:
            raise InvalidRequest(f"Seed must be between 1 and {MAX_SEED}.")
        if self.output_format not in OUTPUT_FORMATS:
            raise InvalidRequest(f"The format must be one of: {', '.join(OUTPUT_FORMATS)}.")

    @classmethod
    def create(
        cls,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        model: str | None = None,
        motion_module: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        output_format: str | None = None,
        rng: random.Random | None = None,
    ) -> GenerationRequest:
        """Build a request from optional command options; no seed (or 0) picks one."""
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"Seed must be between 0 and {MAX_SEED} (0 picks one for you).")
        return cls(
            prompt=prompt.strip(),
            negative_prompt=(negative_prompt or "").strip(),
            model=model or DEFAULT_CHECKPOINT,
            motion_module=motion_module or DEFAULT_MOTION_MODULE,
            steps=DEFAULT_STEPS if steps is None else steps,
            guidance_scale=DEFAULT_GUIDANCE if guidance_scale is None else round(guidance_scale, 2),
            seed=seed if seed else random_seed(rng),
            output_format=(output_format or DEFAULT_OUTPUT_FORMAT).strip().lower(),
        )

    def with_new_seed(self, rng: random.Random | None = None) -> GenerationRequest:
        """Return the same settings with a fresh random seed."""
        seed = random_seed(rng)
        while seed == self.seed:
            seed = random_seed(rng)
        return replace(self, seed=seed)

    def remixed(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        steps_and_guidance: str,
        seed: str,
        output_format: str | None = None,
    ) -> GenerationRequest:
        """Parse edited text fields into a new request, keeping the model and motion module."""
        parts = [part for part in re.split(r"[\s,;/]+", steps_and_guidance.strip()) if part]
        if len(parts) != 2:
            raise InvalidRequest(
                "Write the steps and the guidance scale as two numbers, like “25, 7.5”."
            )
        try:
            step_count = int(parts[0])
        except ValueError:
            raise InvalidRequest(
                f"Steps must be a whole number between {MIN_STEPS} and {MAX_STEPS}."
            ) from None
        try:
            guidance = float(parts[1])
        except ValueError:
            raise InvalidRequest(
                f"Guidance scale must be a number between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g}."
            ) from None
        seed_text = seed.strip()
        try:
            seed_value = int(seed_text) if seed_text else 0
        except ValueError:
            raise InvalidRequest(f"Seed must be a whole number between 0 and {MAX_SEED}.") from None
        return GenerationRequest.create(
            prompt,
            negative_prompt=negative_prompt,
            model=self.model,
            motion_module=self.motion_module,
            steps=step_count,
            guidance_scale=guidance,
            seed=seed_value,
            output_format=output_format or self.output_format,
        )

    def to_api_input(self) -> dict[str, Any]:
        """Return the `input` object for lucataco/animate-diff, seed always explicit."""
        return {
            "prompt": self.prompt,
            "n_prompt": self.negative_prompt,
            "path": self.model,
            "motion_module": self.motion_module,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
        }

    @classmethod
    def from_api_input(
        cls, data: Mapping[str, Any], *, output_format: str = DEFAULT_OUTPUT_FORMAT
    ) -> GenerationRequest:
        """Rebuild a request from a stored or returned `input` object."""
        try:
            return cls(
                prompt=str(data["prompt"]),
                negative_prompt=str(data.get("n_prompt") or ""),
                model=str(data.get("path") or DEFAULT_CHECKPOINT),
                motion_module=str(data.get("motion_module") or DEFAULT_MOTION_MODULE),
                steps=_whole(data.get("steps", DEFAULT_STEPS)),
                guidance_scale=float(data.get("guidance_scale", DEFAULT_GUIDANCE)),
                seed=_whole(data["seed"]),
                output_format=output_format,
            )
        except InvalidRequest:
            raise
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            raise InvalidRequest("The stored request is incomplete or malformed.") from None

    def to_json(self) -> str:
        """Serialise the API input for storage."""
        return json.dumps(self.to_api_input(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(
        cls, text: str, *, output_format: str = DEFAULT_OUTPUT_FORMAT
    ) -> GenerationRequest:
        """Inverse of `to_json` (which holds the API input only)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidRequest("The stored request is not valid JSON.") from None
        if not isinstance(data, Mapping):
            raise InvalidRequest("The stored request is incomplete or malformed.")
        return cls.from_api_input(data, output_format=output_format)

    @property
    def model_name(self) -> str:
        """The checkpoint's human name."""
        return CHECKPOINTS.get(self.model, self.model)

    @property
    def motion_module_name(self) -> str:
        """The motion module's human name."""
        return MOTION_MODULES.get(self.motion_module, self.motion_module)


def _whole(value: object) -> int:
    """Read a whole number from stored JSON, refusing fractions and booleans."""
    if isinstance(value, bool):
        raise TypeError("not a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    if isinstance(value, int | str):
        return int(value)
    raise TypeError("not a whole number")


class JobStatus(StrEnum):
    """Where a job stands; each step is stored before the next begins."""

    QUEUED = "queued"
    SUBMITTED = "submitted"  # the create may have reached the API; its answer is not stored yet
    RUNNING = "running"  # the API accepted it; `prediction_id` is known
    DELIVERING = "delivering"  # the prediction succeeded; the result is being posted
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        """True once nothing more will happen to the job."""
        return self in _FINAL

    @property
    def is_pending(self) -> bool:
        """True while the job still waits for or runs a prediction (Cancel applies)."""
        return self in (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING)


_FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED})


@dataclass(frozen=True, slots=True)
class Job:
    """One request as stored: who asked where, what they asked, and how far it got."""

    id: int
    guild_id: int
    channel_id: int
    requester_id: int
    request: GenerationRequest
    status: JobStatus
    created_at: float
    updated_at: float
    request_message_id: int | None = None
    prediction_id: str | None = None
    result_message_id: int | None = None
    error: str | None = None
    parent_job_id: int | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    predict_time: float | None = None
    deleted: bool = False
    upload_limit: int | None = None  # bytes, as Discord gave it with the request
    model_version: str | None = None  # the version that made the result
    reruns: int = 0  # times the prediction was made again because its output expired
    # The interaction's token, kept only until the status message id is stored (or the job
    # ends): a restart edits the original response through it instead of posting a second
    # message. A credential: left out of repr so that no log of a job can show it.
    interaction_token: str | None = field(default=None, repr=False)

    @property
    def seed(self) -> int:
        """The seed sent to the API."""
        return self.request.seed
