"""Requests, their validation, and the words shown to people."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bot.core.jobs import (
    CHECKPOINTS,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    MAX_SEED,
    GenerationRequest,
    InvalidRequest,
    Job,
    JobStatus,
)
from bot.core.reporter import JobResult, JobStatusUpdate, Stage
from bot.media import Upload
from bot.texts.cards import reproduce_command, result_card
from bot.texts.formatting import (
    DESCRIPTION_LIMIT,
    EMBED_TOTAL_LIMIT,
    FIELD_VALUE_LIMIT,
    format_duration,
    shorten,
)
from bot.texts.member import stage_line, status_text


def _job(request: GenerationRequest, requester: int = 77) -> Job:
    return Job(
        id=12,
        guild_id=1,
        channel_id=2,
        requester_id=requester,
        request=request,
        status=JobStatus.RUNNING,
        created_at=0,
        updated_at=0,
    )


def _result() -> JobResult:
    upload = Upload(Path("animate-1-a-cat.mp4"), "animate-1-a-cat.mp4", "video/mp4", 1234)
    return JobResult(
        file=upload,
        output_size=1234,
        upload_limit=10 * 2**20,
        prediction_id="pred1",
        model_version="beecf59c4aee8d81bf04f0381033dfa10dc16e845b4ae00d281e2fa377e48a9f",
        predict_time=31.4,
        elapsed=75,
    )


def test_defaults_and_an_explicit_random_seed() -> None:
    request = GenerationRequest.create("a cat", rng=random.Random(1))
    assert request.steps == DEFAULT_STEPS and request.guidance_scale == DEFAULT_GUIDANCE
    assert 1 <= request.seed <= MAX_SEED
    api_input = request.to_api_input()
    assert api_input["seed"] == request.seed and api_input["n_prompt"] == ""
    assert set(api_input) == {
        "prompt",
        "n_prompt",
        "path",
        "motion_module",
        "steps",
        "guidance_scale",
        "seed",
    }


def test_seed_zero_means_pick_one() -> None:
    assert GenerationRequest.create("a cat", seed=0).seed != 0
    assert GenerationRequest.create("a cat", seed=5).seed == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "Steps must be between 1 and 100"),
        ({"steps": 101}, "Steps must be between 1 and 100"),
        ({"guidance_scale": 0.5}, "Guidance scale must be between 1 and 10"),
        ({"guidance_scale": 10.5}, "Guidance scale must be between 1 and 10"),
        ({"seed": -1}, "Seed must be between 0 and"),
        ({"seed": MAX_SEED + 1}, "Seed must be between 0 and"),
        ({"model": "nope.safetensors"}, "Unknown model"),
        ({"motion_module": "mm_x"}, "Unknown motion module"),
    ],
)
def test_out_of_range_settings_are_refused_with_a_sentence(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        GenerationRequest.create("a cat", **kwargs)  # type: ignore[arg-type]


def test_blank_and_overlong_prompts_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        GenerationRequest.create("   ")
    with pytest.raises(InvalidRequest, match="longer than"):
        GenerationRequest.create("x" * 1001)


def test_reroll_keeps_everything_but_the_seed() -> None:
    request = GenerationRequest.create("a cat", seed=3, steps=30, model="lyriel_v16.safetensors")
    again = request.with_new_seed(random.Random(2))
    assert again.seed != 3
    assert again.to_api_input() | {"seed": 3} == request.to_api_input()


def test_json_round_trip() -> None:
    request = GenerationRequest.create(
        "ünïcode ✨", negative_prompt="bad", seed=9, guidance_scale=2.25
    )
    assert GenerationRequest.from_json(request.to_json()) == request


def test_reproduce_command_has_every_setting() -> None:
    request = GenerationRequest.create(
        "a `weird` prompt", negative_prompt="blur", seed=42, steps=30, guidance_scale=8
    )
    command = reproduce_command(request)
    assert command.startswith("/animate prompt:a ˋweirdˋ prompt negative_prompt:blur ")
    for part in (
        "model:ToonYou beta 3",
        "motion_module:Motion v1.5 v2",
        "steps:30",
        "guidance_scale:8",
        "seed:42",
    ):
        assert part in command
    assert "`" not in command


def test_result_card_shows_settings_seed_and_time() -> None:
    request = GenerationRequest.create("a fox", negative_prompt="blurry", seed=42, steps=30)
    card = result_card(_job(request), _result())
    fields = {f.name: f.value for f in card.fields}
    assert fields["Seed"] == "42" and fields["Steps"] == "30" and fields["Guidance"] == "7.5"
    assert fields["Model"] == CHECKPOINTS[request.model]
    assert fields["Negative prompt"] == "blurry"
    assert fields["Time"] == "1m 15s (31.4s on GPU)"
    assert "seed:42" in card.description and card.footer == "Job 12 · prediction pred1"


def test_result_card_stays_within_discord_limits_for_hostile_text() -> None:
    hostile = ("@everyone <@&1> **bold** ```fence``` \u202e\u200b" * 40)[:1000]
    request = GenerationRequest.create(hostile, negative_prompt=hostile, seed=1)
    card = result_card(_job(request), _result())
    assert len(card.description) <= DESCRIPTION_LIMIT
    assert all(len(f.value) <= FIELD_VALUE_LIMIT for f in card.fields)
    assert card.total_length() <= EMBED_TOTAL_LIMIT
    assert "\u202e" not in card.description and "\u200b" not in card.description
    assert card.description.count("```") == 2  # only the block we opened and closed


def test_status_lines() -> None:
    job = _job(GenerationRequest.create("a *star*", seed=1))
    assert stage_line(JobStatusUpdate(Stage.QUEUED, position=1)) == (
        "⏳ Queued: next in this server's queue."
    )
    assert "#3" in stage_line(JobStatusUpdate(Stage.QUEUED, position=3))
    sampling = stage_line(JobStatusUpdate(Stage.SAMPLING, step=10, total=25))
    assert "10/25 steps (40%)" in sampling
    text = status_text(job, JobStatusUpdate(Stage.STARTING))
    assert text.startswith("🎬 Animation for <@77>\n> a \\*star\\*")


def test_helpers() -> None:
    assert shorten("abcdef", 4) == "abc…" and shorten("abc", 4) == "abc"
    assert format_duration(5) == "5s" and format_duration(65) == "1m 05s"
    assert format_duration(3725) == "1h 02m"
