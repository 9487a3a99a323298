"""The queue view and the estimate on status lines, as plain text."""

from __future__ import annotations

from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.reporter import JobStatusUpdate, QueueEntry, Stage
from bot.texts.formatting import CONTENT_LIMIT
from bot.texts.member import QUEUE_EMPTY_TEXT, QUEUE_LINES, queue_text, stage_line

ALICE, BOB = 111, 222


def _entry(
    job_id: int,
    requester: int,
    prompt: str,
    position: int | None,
    status: JobStatusUpdate,
) -> QueueEntry:
    job = Job(
        id=job_id,
        guild_id=1,
        channel_id=2,
        requester_id=requester,
        request=GenerationRequest.create(prompt, seed=job_id),
        status=JobStatus.QUEUED if position else JobStatus.RUNNING,
        created_at=0,
        updated_at=0,
    )
    return QueueEntry(job, position, status)


def test_status_lines_show_the_estimate_as_a_relative_timestamp() -> None:
    assert stage_line(JobStatusUpdate(Stage.QUEUED, position=2, eta=1_700_000_100)) == (
        "⏳ Queued: #2 in this server's queue · ready <t:1700000100:R>."
    )
    assert stage_line(JobStatusUpdate(Stage.STARTING, eta=1_700_000_050)) == (
        "🚀 Starting… · ready <t:1700000050:R>"
    )
    sampling = stage_line(JobStatusUpdate(Stage.SAMPLING, step=5, total=25, eta=1_700_000_020))
    assert sampling.endswith("5/25 steps (20%) · ready <t:1700000020:R>")
    # No estimate, no mention of one.
    assert "<t:" not in stage_line(JobStatusUpdate(Stage.QUEUED, position=2))
    assert "<t:" not in stage_line(JobStatusUpdate(Stage.UNAVAILABLE, position=2, eta=5))


def test_an_empty_queue_is_a_friendly_sentence() -> None:
    assert queue_text([], ALICE) == QUEUE_EMPTY_TEXT
    assert "/animate" in QUEUE_EMPTY_TEXT


def test_the_queue_lists_running_then_waiting_with_owner_stage_and_estimate() -> None:
    entries = [
        _entry(
            1,
            ALICE,
            "a lighthouse in a storm",
            None,
            JobStatusUpdate(Stage.SAMPLING, step=10, total=25, eta=1_700_000_030),
        ),
        _entry(2, BOB, "a *red* fox", 1, JobStatusUpdate(Stage.QUEUED, 1, eta=1_700_000_090)),
        _entry(3, ALICE, "waves", 2, JobStatusUpdate(Stage.QUEUED, 2)),
    ]
    lines = queue_text(entries, BOB).split("\n")
    assert lines[0] == "🎬 **This server's queue**: 1 running, 2 waiting"
    assert lines[1] == (
        f"▶️ <@{ALICE}> · a lighthouse in a storm · generating, 10/25 steps · ready <t:1700000030:R>"
    )
    assert lines[2] == (
        f"`#1` <@{BOB}> · a \\*red\\* fox · waiting · ready <t:1700000090:R> **← you**"
    )
    assert lines[3] == f"`#2` <@{ALICE}> · waves · waiting"
    assert len(lines) == 4
    # Alice sees her own two marked instead.
    assert queue_text(entries, ALICE).count("← you") == 2


def test_prompts_are_shortened_to_one_line() -> None:
    entry = _entry(1, ALICE, "line one\nline two " + "x" * 200, 1, JobStatusUpdate(Stage.QUEUED))
    line = queue_text([entry], BOB).split("\n")[1]
    assert "line one line two" in line and "…" in line and len(line) < 120


def test_a_long_queue_shows_the_first_ones_and_how_many_more_within_discords_limit() -> None:
    hostile = "**@everyone** `x` " * 50  # escaping doubles its length
    entries = [
        _entry(n, ALICE if n % 2 else BOB, hostile, n, JobStatusUpdate(Stage.QUEUED, n, eta=n))
        for n in range(1, 41)
    ]
    text = queue_text(entries, BOB)
    assert len(text) <= CONTENT_LIMIT
    lines = text.split("\n")
    shown = len(lines) - 2  # header and the "more" line
    assert 5 < shown < 40
    assert lines[-1] == f"…and {40 - shown} more."
    # Exactly at the edge: every line fits, no "more" line.
    few = entries[:3]
    full = queue_text(few, BOB)
    assert queue_text(few, BOB, limit=len(full)) == full
    cut = queue_text(few, BOB, limit=len(full) - 1)
    assert cut.endswith("…and 1 more.") and len(cut) <= len(full) - 1


def test_a_long_queue_of_short_lines_stops_at_a_readable_length() -> None:
    entries = [
        _entry(n, ALICE, "cat", n, JobStatusUpdate(Stage.QUEUED, n))
        for n in range(1, QUEUE_LINES + 6)
    ]
    lines = queue_text(entries, BOB).split("\n")
    assert len(lines) == 1 + QUEUE_LINES + 1
    assert lines[-2].startswith(f"`#{QUEUE_LINES}` ") and lines[-1] == "…and 5 more."
    assert len(queue_text(entries[:QUEUE_LINES], BOB).split("\n")) == 1 + QUEUE_LINES
