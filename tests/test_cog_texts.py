"""What members read about jobs on the operator's own GPUs: where they run, and why a rerun."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bot.backends.base import PredictionAPIError
from bot.backends.cog.ids import CogPredictionId, Naming, derive_secret, parse, server_of
from bot.backends.cog.servers import Answer, CogServer, error_detail
from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.outcomes import api_refusal
from bot.core.reporter import JobResult, JobStatusUpdate, QueueEntry, Stage
from bot.media import Upload
from bot.texts.cards import LOST_RERUN_NOTE, RERUN_NOTE, result_card
from bot.texts.member import queue_text, status_text

JOB = Job(
    id=7,
    guild_id=1,
    channel_id=2,
    requester_id=111,
    request=GenerationRequest.create("a lighthouse", seed=42),
    status=JobStatus.RUNNING,
    created_at=0,
    updated_at=0,
    prediction_id="cog:gpu-a:job-7-r0",
)


def _result(prediction_id: str) -> JobResult:
    upload = Upload(Path("animate-7.mp4"), "animate-7.mp4", "video/mp4", 1234)
    return JobResult(upload, 1234, 10 * 2**20, prediction_id, None, 3.2, 5.0)


def test_the_status_line_and_the_queue_say_which_gpu_runs_a_job() -> None:
    sampling = JobStatusUpdate(Stage.SAMPLING, step=5, total=25)
    assert status_text(JOB, sampling).endswith("5/25 steps (20%) · on `gpu-a`")
    queue = queue_text([QueueEntry(JOB, None, sampling)], viewer_id=111)
    assert "· on `gpu-a`" in queue
    on_replicate = dataclasses.replace(JOB, prediction_id="ufawqhfynnddngldkgtslldrkq")
    assert "on `" not in status_text(on_replicate, sampling)
    # Once it is being posted, the GPU is free again: the line no longer names it.
    assert "on `" not in status_text(JOB, JobStatusUpdate(Stage.UPLOADING))


def test_a_card_says_why_it_was_made_again() -> None:
    rerun = dataclasses.replace(JOB, reruns=1, prediction_id="cog:gpu-b:job-7-r1")
    notes = [f.value for f in result_card(rerun, _result("cog:gpu-b:job-7-r1")).fields]
    assert LOST_RERUN_NOTE in notes and "same input and seed" in LOST_RERUN_NOTE
    expired = dataclasses.replace(JOB, reruns=1, prediction_id="ufawqhfynnddngldkgtslldrkq")
    notes = [f.value for f in result_card(expired, _result("ufawq")).fields]
    assert RERUN_NOTE in notes


def test_ids_name_the_server_and_hashes_cannot_be_made_without_the_secret() -> None:
    assert parse("cog:gpu-a:job-7-r0") == CogPredictionId("gpu-a", "job-7-r0")
    assert parse("ufawqhfynnddngldkgtslldrkq") is None and parse("cog:bad name:x") is None
    assert server_of(None) is None
    ours, theirs = Naming(derive_secret("token-1")), Naming(derive_secret("token-2"))
    prediction = CogPredictionId("gpu-a", "job-7-r0")
    server_id = ours.server_id(prediction)
    assert server_id.startswith("job-7-r0-") and server_id == ours.server_id(prediction)
    assert server_id != theirs.server_id(prediction)
    assert ours.token(server_id) != theirs.token(server_id) and len(ours.token(server_id)) == 32


def test_a_refusal_lists_each_bad_input_in_a_sentence_not_json() -> None:
    cog_422 = {
        "detail": [
            {"loc": ["body", "input", "steps"], "msg": "500 is greater than the maximum of 100"},
            {"loc": ["body", "input", "guidance_scale"], "msg": "must be at least 1"},
        ]
    }
    text = api_refusal(PredictionAPIError(error_detail(Answer(422, cog_422)), status=422))
    assert text == (
        "The animation service refused the request: steps: 500 is greater than the maximum "
        "of 100; guidance_scale: must be at least 1."
    )
    assert error_detail(Answer(409, {"error": "At capacity"})) == "At capacity"
    assert error_detail(Answer(500, {"detail": [{"x": 1}]})) == "The GPU server answered 500."


def test_a_servers_health_reaches_members_as_words() -> None:
    words = {}
    for health in ("UNREACHABLE", "STARTING", "UNKNOWN", "SETUP_FAILED", "DEFUNCT"):
        words[health] = CogServer("gpu-a", "http://10.0.0.5:5000", health=health).unavailable()
    assert words["UNREACHABLE"] == "its GPU server does not answer"
    assert words["STARTING"] == words["UNKNOWN"] == "its GPU server is not ready yet"
    assert words["SETUP_FAILED"] == words["DEFUNCT"] == "its GPU server is broken"
    refused = CogServer("gpu-a", "http://h:1", health="READY", refused="another model")
    assert refused.unavailable() == "its GPU server was taken out of use"
    assert not any(health in text for text in words.values() for health in words)
