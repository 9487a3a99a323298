"""Property tests: hostile and odd input against request validation and the words shown."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core import redaction
from bot.core.jobs import (
    CHECKPOINTS,
    INVISIBLE,
    MAX_PROMPT_LENGTH,
    MAX_SEED,
    MOTION_MODULES,
    GenerationRequest,
    InvalidRequest,
    Job,
    JobStatus,
)
from bot.core.reporter import JobResult, JobStatusUpdate, Stage
from bot.media import Upload
from bot.texts.cards import result_card
from bot.texts.formatting import (
    CONTENT_LIMIT,
    DESCRIPTION_LIMIT,
    EMBED_TOTAL_LIMIT,
    FIELD_NAME_LIMIT,
    FIELD_VALUE_LIMIT,
    FIELDS_LIMIT,
    FOOTER_LIMIT,
    TITLE_LIMIT,
)
from bot.texts.member import canceled_text, done_text, failed_text, status_text, too_large_text

ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
BIDI = "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
FRAGMENTS = [
    "@everyone",
    "@here",
    "<@123456789012345678>",
    "<@!123456789012345678>",
    "<@&876543210987654321>",
    "<#111111111111111111>",
    "<t:0:R>",
    "<:emoji:123>",
    "```",
    "```py\nprint(1)\n```",
    "`",
    "**",
    "__",
    "~~",
    "||",
    "> ",
    "# ",
    "1. ",
    "- ",
    "[link](https://example.com)",
    "\\",
    "\n",
    "\t",
    "  ",
    "…",
    "Authorization: Bearer abc",
    "שלום",
    "مرحبا",
    "🎬",
    *ZERO_WIDTH,
    *BIDI,
]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hostile_text(max_size: int = MAX_PROMPT_LENGTH) -> st.SearchStrategy[str]:
    """Text mixing Discord syntax, invisible and bidi characters and any unicode, up to a size."""
    pieces = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=60).map(
        "".join
    )
    repeated = st.builds(lambda piece, n: piece * n, pieces, st.integers(1, 400))
    return st.one_of(pieces, repeated, st.text(max_size=max_size)).map(lambda t: t[:max_size])


def accepted_request() -> st.SearchStrategy[GenerationRequest]:
    """Requests the bot accepts, with hostile prompts of any length up to the maximum."""
    return st.builds(
        GenerationRequest,
        prompt=hostile_text().filter(_has_visible_text),
        negative_prompt=hostile_text(),
        model=st.sampled_from(sorted(CHECKPOINTS)),
        motion_module=st.sampled_from(sorted(MOTION_MODULES)),
        steps=st.integers(1, 100),
        guidance_scale=st.floats(1.0, 10.0).map(lambda g: round(g, 2)),
        seed=st.integers(1, MAX_SEED),
    )


def _has_visible_text(text: str) -> bool:
    """True if a prompt has something other than spaces and invisible characters."""
    return bool(INVISIBLE.sub("", text).strip())


def _job(request: GenerationRequest, requester: int = 123, job_id: int = 7) -> Job:
    return Job(
        id=job_id,
        guild_id=1,
        channel_id=2,
        requester_id=requester,
        request=request,
        status=JobStatus.RUNNING,
        created_at=0,
        updated_at=0,
    )


def assert_clear_sentence(error: InvalidRequest) -> None:
    """A member-facing refusal: one short line, a capitalised sentence ending in a full stop."""
    text = str(error)
    assert text and text[0].isupper() and text.endswith("."), text
    assert "\n" not in text and len(text) <= 200, text
    assert "Traceback" not in text and "Error" not in text, text


# ---- request validation ---------------------------------------------------------------------

ints = st.one_of(st.none(), st.integers(-(2**40), 2**40), st.sampled_from([0, 1, 100, MAX_SEED]))
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 11))
names = st.one_of(st.none(), st.text(max_size=300), st.sampled_from(sorted(CHECKPOINTS)))
modules = st.one_of(st.none(), st.text(max_size=300), st.sampled_from(sorted(MOTION_MODULES)))


@SETTINGS
@given(
    prompt=hostile_text(1200),
    negative=st.one_of(st.none(), hostile_text(1200)),
    model=names,
    motion_module=modules,
    steps=ints,
    guidance=floats,
    seed=ints,
)
def test_create_accepts_valid_requests_that_round_trip_and_refuses_the_rest_clearly(
    prompt: str,
    negative: str | None,
    model: str | None,
    motion_module: str | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
) -> None:
    try:
        request = GenerationRequest.create(
            prompt,
            negative_prompt=negative,
            model=model,
            motion_module=motion_module,
            steps=steps,
            guidance_scale=guidance,
            seed=seed,
        )
    except InvalidRequest as error:
        assert_clear_sentence(error)
        return
    assert 1 <= request.seed <= MAX_SEED and 1 <= request.steps <= 100
    assert 1.0 <= request.guidance_scale <= 10.0
    assert 0 < len(request.prompt) <= MAX_PROMPT_LENGTH
    assert len(request.negative_prompt) <= MAX_PROMPT_LENGTH
    assert request.model in CHECKPOINTS and request.motion_module in MOTION_MODULES
    assert GenerationRequest.from_json(request.to_json()) == request
    assert GenerationRequest.from_api_input(json.loads(json.dumps(request.to_api_input()))) == (
        request
    )


@SETTINGS
@given(
    request=accepted_request(),
    prompt=hostile_text(1200),
    negative=hostile_text(1200),
    steps=st.one_of(st.text(max_size=30), st.integers(-5, 200).map(str)),
    guidance=st.one_of(st.text(max_size=30), st.floats().map(str), st.sampled_from(["7,5", "nan"])),
    separator=st.sampled_from([", ", " ", ",", " / ", "", ";;"]),
    seed=st.one_of(st.text(max_size=30), st.integers(-5, 2**40).map(str), st.just("9" * 5000)),
    output_format=st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["mp4", "gif"])),
)
def test_remix_parses_any_text_or_refuses_it_clearly(
    request: GenerationRequest,
    prompt: str,
    negative: str,
    steps: str,
    guidance: str,
    separator: str,
    seed: str,
    output_format: str | None,
) -> None:
    try:
        remixed = request.remixed(
            prompt=prompt,
            negative_prompt=negative,
            steps_and_guidance=steps + separator + guidance,
            seed=seed,
            output_format=output_format,
        )
    except InvalidRequest as error:
        assert_clear_sentence(error)
        return
    assert remixed.model == request.model and remixed.motion_module == request.motion_module
    stored = GenerationRequest.from_json(remixed.to_json(), output_format=remixed.output_format)
    assert stored == remixed


json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(), inner)),
    max_leaves=8,
)


@SETTINGS
@given(
    data=st.one_of(
        st.dictionaries(
            st.sampled_from(
                ["prompt", "n_prompt", "path", "motion_module", "steps", "guidance_scale", "seed"]
            ),
            json_values,
        ),
        json_values,
    ),
    raw=st.text(max_size=50),
)
def test_stored_requests_that_are_malformed_are_refused_clearly(data: Any, raw: str) -> None:
    for text in (json.dumps(data), raw):
        try:
            request = GenerationRequest.from_json(text)
        except InvalidRequest as error:
            assert_clear_sentence(error)
        else:
            assert GenerationRequest.from_json(request.to_json()) == request


def test_prompts_of_invisible_characters_or_lone_surrogates_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        GenerationRequest.create(ZERO_WIDTH + BIDI + " ")
    with pytest.raises(InvalidRequest, match="not valid text"):
        GenerationRequest.create("a cat \ud800")
    with pytest.raises(InvalidRequest, match="incomplete or malformed"):
        GenerationRequest.from_json('{"prompt": "a cat", "seed": 1.5}')
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        GenerationRequest.from_json("{")


# ---- the words shown ----------------------------------------------------------------------

_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_MENTION = re.compile(r"<(?:@[!&]?|#)\d+>")


def unescape(text: str) -> str:
    """Undo markdown escaping as Discord renders it."""
    return _ESCAPED.sub(r"\1", text)


def unescaped_parts(text: str) -> str:
    """What remains of text once every escaped character is taken out."""
    return _ESCAPED.sub("", text)


def assert_no_invisible(text: str) -> None:
    """No zero-width or bidi control can hide or reorder anything around it."""
    assert not set(text) & set(ZERO_WIDTH + BIDI), repr(text)


def assert_member_text_is_inert(shown: str) -> None:
    """Escaped member text: no markdown, mention or fence survives as syntax."""
    bare = unescaped_parts(shown)
    assert not set(bare) & set("`*_~|<@[]>#"), repr(shown)


def assert_visibly_shortened(shown: str, original: str) -> None:
    """Shown member text is the whole (flattened) text, or a prefix ending in an ellipsis."""
    visible = " ".join(INVISIBLE.sub("", original).split())
    seen = unescape(shown)
    if seen != visible:
        assert seen.endswith("…") and visible.startswith(seen[:-1]), (seen, visible)


@SETTINGS
@given(
    request=accepted_request(),
    prediction_id=st.one_of(st.text(min_size=1, max_size=30), hostile_text(5000)),
    elapsed=st.floats(0, 10**7),
    predict_time=st.one_of(st.none(), st.floats(0, 10**7)),
    job_id=st.integers(1, 2**53),
)
def test_result_card_keeps_every_discord_limit_and_shows_text_inertly(
    request: GenerationRequest,
    prediction_id: str,
    elapsed: float,
    predict_time: float | None,
    job_id: int,
) -> None:
    job = _job(request, job_id=job_id)
    upload = Upload(Path("animate.mp4"), "animate.mp4", "video/mp4", 1)
    result = JobResult(upload, 1, 10 * 2**20, prediction_id, prediction_id, predict_time, elapsed)
    card = result_card(job, result)

    assert len(card.title) <= TITLE_LIMIT
    assert len(card.description) <= DESCRIPTION_LIMIT
    assert len(card.fields) <= FIELDS_LIMIT
    assert all(len(f.name) <= FIELD_NAME_LIMIT for f in card.fields)
    assert all(0 < len(f.value) <= FIELD_VALUE_LIMIT for f in card.fields)
    assert len(card.footer) <= FOOTER_LIMIT
    assert card.total_length() <= EMBED_TOTAL_LIMIT
    for text in (card.title, card.description, card.footer, *(f.value for f in card.fields)):
        assert_no_invisible(text)
    assert card.footer.startswith(f"Job {job_id} · ")  # how a restart finds the post

    # The prompt, then exactly one code block holding the command, closed at the very end.
    prompt_part, sep, rest = card.description.partition("\n\n**Reproduce**\n```\n")
    assert sep and rest.endswith("\n```")
    code = rest.removesuffix("\n```")
    assert "`" not in code and "\n" not in code
    assert code.startswith("/animate prompt:")
    assert f"seed:{request.seed}" in code or code.endswith("…")
    assert_member_text_is_inert(prompt_part)
    assert_visibly_shortened(prompt_part, request.prompt)

    negative = {f.name: f.value for f in card.fields}["Negative prompt"]
    if negative != "none" or _has_visible_text(request.negative_prompt):
        assert_member_text_is_inert(negative)
        assert_visibly_shortened(negative, request.negative_prompt)


@SETTINGS
@given(
    request=accepted_request(),
    requester=st.integers(1, 2**63 - 1),
    reason=hostile_text(5000),
    position=st.one_of(st.none(), st.integers(1, 10**9)),
    size=st.integers(0, 2**40),
)
def test_status_texts_fit_a_message_and_ping_only_as_written(
    request: GenerationRequest, requester: int, reason: str, position: int | None, size: int
) -> None:
    job = _job(request, requester=requester)
    texts = [
        status_text(job, JobStatusUpdate(Stage.QUEUED, position=position)),
        status_text(job, JobStatusUpdate(Stage.SAMPLING, step=3, total=25)),
        done_text(job),
        canceled_text(job),
        too_large_text(job, size, 10 * 2**20),
        failed_text(job, reason),
    ]
    for text in texts:
        assert len(text) <= CONTENT_LIMIT
        assert_no_invisible(text)
        header, _, prompt_line = text.partition("\n> ")
        # The requester is named once; the prompt mentions no one and formats nothing.
        assert header == f"🎬 Animation for <@{requester}>"
        assert _MENTION.findall(unescaped_parts(prompt_line)) == []
        shown_prompt = prompt_line.split("\n", 1)[0]
        assert_member_text_is_inert(shown_prompt)
        assert_visibly_shortened(shown_prompt, request.prompt)
    failure = texts[-1].split("\n❌ ", 1)[1]
    assert "\n" not in failure
    assert_member_text_is_inert(failure)
    assert_visibly_shortened(failure, redaction.redact(INVISIBLE.sub("", reason)))


def test_failure_reasons_never_show_a_registered_secret_or_credentials() -> None:
    secret = "r8_SECRETSECRETSECRET"
    redaction.register_secret(secret)
    try:
        job = _job(GenerationRequest.create("a cat", seed=1))
        text = failed_text(
            job,
            f"The animation failed: env REPLICATE_API_TOKEN={secret}; "
            "fetch https://user:hunter2@example.com/x?token=abc failed; "
            "header Authorization: Bearer xyz987",
        )
    finally:
        redaction.forget_secrets()
    assert secret not in text and "hunter2" not in text and "abc" not in text
    assert "xyz987" not in text
    assert "redacted" in text
