"""The Store contract: what every implementation must do, run against each one in turn.

Tests here use only the methods of the `Store` protocol, through the `any_store` fixture
(tests/conftest.py), so a second implementation passes or fails the same suite. What one
database does on its own (files, migrations, its error types) lives in its own module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bot.core import redaction
from bot.core.eta import Timing
from bot.core.jobs import GenerationRequest, Job, JobStatus
from bot.core.redaction import MASK
from bot.storage.base import GpuSeconds, InvalidTransition, Store
from tests.conftest import LEAKS_IN_REASONS, StoreClock, end_with_secret_reasons

DAY = 86_400
TODAY = 19_675  # the UTC day number of StoreClock.START
START = StoreClock.START
GUILD, OTHER_GUILD, MEMBER, OTHER_MEMBER = 1, 2, 10, 11
TOKEN = "aW50ZXJhY3Rpb246MTIz:interaction-token-value"


def _request(seed: int = 42) -> GenerationRequest:
    return GenerationRequest.create("a fox in the snow", seed=seed)


async def _add(
    store: Store, *, guild: int = GUILD, user: int = MEMBER, token: str | None = None
) -> int:
    job = await store.add_job(
        guild_id=guild,
        channel_id=100,
        requester_id=user,
        request=_request(),
        interaction_token=token,
    )
    return job.id


async def _job_in(store: Store, state: JobStatus, *, user: int = MEMBER) -> int:
    """Add a job and walk it to `state` by the usual steps."""
    job_id = await _add(store, user=user)
    if state is JobStatus.QUEUED:
        return job_id
    if state is JobStatus.CANCELED:
        await store.mark_canceled(job_id)
        return job_id
    if state is JobStatus.FAILED:
        await store.mark_failed(job_id, "broken")
        return job_id
    await store.mark_submitted(job_id)
    if state is JobStatus.SUBMITTED:
        return job_id
    await store.mark_running(job_id, f"p{job_id}")
    if state is JobStatus.RUNNING:
        return job_id
    await store.mark_delivering(job_id, predict_time=1.0)
    if state is JobStatus.DELIVERING:
        return job_id
    await store.mark_done(job_id, result_message_id=job_id)
    assert state is JobStatus.DONE
    return job_id


async def _spend(store: Store, seconds: float, *, guild: int = GUILD, user: int = MEMBER) -> int:
    """A request that ran for `seconds` on the GPU and was delivered."""
    job_id = await _add(store, guild=guild, user=user)
    await store.mark_submitted(job_id)
    await store.mark_running(job_id, f"p{job_id}")
    await store.mark_delivering(job_id, predict_time=seconds)
    await store.mark_done(job_id, result_message_id=job_id)
    return job_id


# ---------------------------------------------------------------------------------------------
# Jobs and their transitions

Step = Callable[[Store, int], Awaitable[Job]]
# Each transition, the states it may start from, and the state it leaves the job in.
TRANSITIONS: dict[str, tuple[Step, set[JobStatus], JobStatus]] = {
    "submitted": (
        lambda s, j: s.mark_submitted(j),
        {JobStatus.QUEUED},
        JobStatus.SUBMITTED,
    ),
    "running": (
        # From running too: the same job's prediction is recorded again after a retry.
        lambda s, j: s.mark_running(j, f"again{j}"),
        {JobStatus.SUBMITTED, JobStatus.RUNNING},
        JobStatus.RUNNING,
    ),
    "delivering": (
        lambda s, j: s.mark_delivering(j, predict_time=2.0),
        {JobStatus.RUNNING, JobStatus.DELIVERING},
        JobStatus.DELIVERING,
    ),
    "rerun": (
        lambda s, j: s.mark_rerun(j),
        {JobStatus.RUNNING, JobStatus.DELIVERING},
        JobStatus.SUBMITTED,
    ),
    "done": (
        lambda s, j: s.mark_done(j, result_message_id=9),
        {JobStatus.DELIVERING},
        JobStatus.DONE,
    ),
    "failed": (
        lambda s, j: s.mark_failed(j, "late"),
        {JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.DELIVERING},
        JobStatus.FAILED,
    ),
    "canceled": (
        lambda s, j: s.mark_canceled(j, "late"),
        {JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING},
        JobStatus.CANCELED,
    ),
}


@pytest.mark.parametrize("start", list(JobStatus), ids=lambda s: f"from-{s.value}")
@pytest.mark.parametrize("name", list(TRANSITIONS))
async def test_each_transition_starts_only_from_its_states(
    any_store: Store, store_clock: StoreClock, name: str, start: JobStatus
) -> None:
    step, allowed, result = TRANSITIONS[name]
    job_id = await _job_in(any_store, start)
    before = await any_store.get(job_id)
    assert before is not None and before.status is start
    store_clock.now += 5
    if start in allowed:
        job = await step(any_store, job_id)
        assert job.status is result and job.updated_at == START + 5
        assert await any_store.get(job_id) == job
    else:
        with pytest.raises(InvalidTransition):
            await step(any_store, job_id)
        assert await any_store.get(job_id) == before  # nothing of the change was written


@pytest.mark.parametrize("name", list(TRANSITIONS))
async def test_a_transition_of_an_unknown_job_is_invalid(any_store: Store, name: str) -> None:
    step, _allowed, _result = TRANSITIONS[name]
    known = await _add(any_store)
    with pytest.raises(InvalidTransition):
        await step(any_store, known + 1000)
    job = await any_store.get(known)
    assert job is not None and job.status is JobStatus.QUEUED


async def test_marking_an_unknown_job_is_invalid(any_store: Store) -> None:
    known = await _add(any_store)
    with pytest.raises(InvalidTransition):
        await any_store.set_request_message(known + 1000, 5)
    with pytest.raises(InvalidTransition):
        await any_store.mark_deleted(known + 1000)
    assert await any_store.get(known + 1000) is None


async def test_a_store_one_process_owns_confirms_every_lease(any_store: Store) -> None:
    # Only processes sharing a store hold leases (tests/test_shared_queue.py); alone, every
    # job is this process's, in every state.
    for state in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DELIVERING):
        await any_store.confirm_lease(await _job_in(any_store, state))


async def test_the_message_and_deleted_marks_apply_in_every_state(any_store: Store) -> None:
    for state in JobStatus:
        job_id = await _job_in(any_store, state)
        job = await any_store.set_request_message(job_id, 500 + job_id)
        assert job.status is state and job.request_message_id == 500 + job_id
        job = await any_store.mark_deleted(job_id)
        assert job.status is state and job.deleted
        stored = await any_store.get(job_id)
        assert stored is not None and stored.deleted and stored.request_message_id == 500 + job_id


async def test_a_new_job_is_queued_with_what_it_was_given(
    any_store: Store, store_clock: StoreClock
) -> None:
    parent = await _add(any_store)
    request = GenerationRequest.create("a gif", seed=3, output_format="gif")
    job = await any_store.add_job(
        guild_id=7,
        channel_id=8,
        requester_id=9,
        request=request,
        parent_job_id=parent,
        upload_limit=25 * 2**20,
    )
    assert job.id > parent
    assert (job.guild_id, job.channel_id, job.requester_id) == (7, 8, 9)
    assert job.status is JobStatus.QUEUED and job.created_at == job.updated_at == START
    assert job.parent_job_id == parent and job.upload_limit == 25 * 2**20
    assert job.request == request and job.request.output_format == "gif"
    assert (job.request_message_id, job.prediction_id, job.result_message_id) == (None,) * 3
    assert (job.error, job.predict_time, job.model_version, job.interaction_token) == (None,) * 4
    assert (job.submitted_at, job.started_at, job.completed_at) == (None,) * 3
    assert not job.deleted and job.reruns == 0
    assert await any_store.get(job.id) == job


async def test_inputs_are_stored_in_full(any_store: Store) -> None:
    request = GenerationRequest.create(
        "@everyone 🎉 «quotes» `code` '; DROP TABLE jobs; --",
        negative_prompt="blurry",
        model="lyriel_v16.safetensors",
        motion_module="mm_sd_v14",
        steps=40,
        guidance_scale=3.25,
        seed=2_147_483_647,
    )
    job = await any_store.add_job(guild_id=1, channel_id=2, requester_id=3, request=request)
    again = await any_store.get(job.id)
    assert again is not None and again.request == request and again.seed == 2_147_483_647


async def test_getting_an_unknown_or_forged_id_returns_none(any_store: Store) -> None:
    job_id = await _add(any_store)
    for forged in (job_id + 1, 0, -1, 2**63, 2**70, -(2**70)):
        assert await any_store.get(forged) is None


async def test_happy_path_transitions_record_each_step(
    any_store: Store, store_clock: StoreClock
) -> None:
    job_id = await _add(any_store)
    job = await any_store.set_request_message(job_id, 555)
    assert job.status is JobStatus.QUEUED and job.request_message_id == 555
    store_clock.now = START + 1
    job = await any_store.mark_submitted(job_id)
    assert job.status is JobStatus.SUBMITTED and job.submitted_at == START + 1
    store_clock.now = START + 2
    job = await any_store.mark_running(job_id, "pred123")
    assert job.status is JobStatus.RUNNING and job.prediction_id == "pred123"
    assert job.started_at == START + 2
    assert await any_store.job_for_prediction("pred123") == job_id
    store_clock.now = START + 3
    job = await any_store.mark_delivering(job_id, predict_time=12.5, model_version="v9")
    assert job.status is JobStatus.DELIVERING and job.predict_time == 12.5
    assert job.model_version == "v9" and job.completed_at is None
    store_clock.now = START + 4
    job = await any_store.mark_done(job_id, result_message_id=777)
    assert job.status is JobStatus.DONE and job.result_message_id == 777
    assert job.completed_at == START + 4 and job.status.is_final
    assert job.created_at == START and job.updated_at == START + 4
    assert job.request_message_id == 555 and job.predict_time == 12.5
    assert await any_store.unfinished() == []
    assert await any_store.get(job_id) == job


async def test_out_of_order_steps_leave_a_canceled_job_as_it_was(any_store: Store) -> None:
    job_id = await _add(any_store)
    with pytest.raises(InvalidTransition):
        await any_store.mark_running(job_id, "p")
    with pytest.raises(InvalidTransition):
        await any_store.mark_done(job_id, result_message_id=1)
    await any_store.mark_canceled(job_id, "by request")
    for step in (
        any_store.mark_submitted(job_id),
        any_store.mark_failed(job_id, "late"),
        any_store.mark_canceled(job_id),
    ):
        with pytest.raises(InvalidTransition):
            await step
    job = await any_store.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELED and job.error == "by request"


async def test_failed_and_canceled_keep_the_reason_and_the_billed_time(
    any_store: Store, store_clock: StoreClock
) -> None:
    store_clock.now = START + 60
    failed = await _job_in(any_store, JobStatus.RUNNING)
    job = await any_store.mark_failed(failed, "CUDA out of memory", predict_time=4.5)
    assert job.status is JobStatus.FAILED and job.error == "CUDA out of memory"
    assert job.predict_time == 4.5 and job.completed_at == START + 60
    # Without a billed time, the one already recorded stays.
    delivering = await _job_in(any_store, JobStatus.DELIVERING)  # predict_time 1.0
    job = await any_store.mark_failed(delivering, "upload refused")
    assert job.predict_time == 1.0
    canceled = await _job_in(any_store, JobStatus.RUNNING)
    job = await any_store.mark_canceled(canceled, predict_time=2.5)
    assert job.status is JobStatus.CANCELED and job.error is None and job.predict_time == 2.5
    assert job.completed_at == START + 60
    assert await any_store.gpu_seconds_since(GUILD, 0) == GpuSeconds(4.5 + 1.0 + 2.5)


async def test_failure_and_cancel_reasons_are_stored_masked(any_store: Store) -> None:
    failed, canceled, untold = await end_with_secret_reasons(any_store, _add)
    # Read once the secret is forgotten: what is stored is masked, not what is shown.
    for job_id in (failed, canceled):
        job = await any_store.get(job_id)
        assert job is not None and job.error is not None
        for leaked in LEAKS_IN_REASONS:
            assert leaked not in job.error
        assert MASK in job.error
    job = await any_store.get(failed)
    assert job is not None and job.error is not None
    assert job.error.startswith("The service said: token [redacted] refused")
    job = await any_store.get(untold)
    assert job is not None and job.error is None


async def test_an_invisible_character_cannot_split_a_secret_past_the_mask(
    any_store: Store,
) -> None:
    secret = "s3cr3t-token-value"
    redaction.register_secret(secret)
    try:
        job_id = await _add(any_store)
        await any_store.mark_failed(
            job_id, f"refused {secret[:6]}\u200b{secret[6:]} and Bearer\u2060 abc123xyz"
        )
    finally:
        redaction.forget_secrets()
    job = await any_store.get(job_id)
    assert job is not None and job.error == f"refused {MASK} and Bearer {MASK}"


async def test_a_rerun_goes_back_to_submitted_and_counts(
    any_store: Store, store_clock: StoreClock
) -> None:
    job_id = await _add(any_store)
    await any_store.mark_submitted(job_id)
    await any_store.mark_running(job_id, "expired-one")
    await any_store.mark_delivering(job_id, predict_time=30.0, model_version="v1")
    store_clock.now = START + 4000
    rerun = await any_store.mark_rerun(job_id)
    assert rerun.status is JobStatus.SUBMITTED and rerun.reruns == 1
    assert rerun.prediction_id is None and rerun.predict_time is None
    assert rerun.submitted_at == START + 4000 and rerun.started_at is None
    # The expired prediction is free again: the new one can be recorded.
    assert await any_store.job_for_prediction("expired-one") is None
    await any_store.mark_running(job_id, "fresh-one")
    assert await any_store.job_for_prediction("fresh-one") == job_id
    assert (await any_store.mark_rerun(job_id)).reruns == 2
    with pytest.raises(InvalidTransition):
        await any_store.mark_rerun(job_id)  # submitted: nothing to rerun
    job = await any_store.get(job_id)
    assert job is not None and job.reruns == 2 and job.status is JobStatus.SUBMITTED


async def test_a_rerun_keeps_the_gpu_time_already_billed(any_store: Store) -> None:
    job_id = await _add(any_store)
    await any_store.mark_submitted(job_id)
    await any_store.mark_running(job_id, "first")
    await any_store.mark_delivering(job_id, predict_time=30)
    await any_store.mark_rerun(job_id)  # the output expired: made again, paid again
    assert await any_store.gpu_seconds_since(GUILD, 0) == GpuSeconds(30)
    await any_store.mark_running(job_id, "second")
    await any_store.mark_delivering(job_id, predict_time=25)
    assert await any_store.gpu_seconds_since(GUILD, 0) == GpuSeconds(55)
    await any_store.mark_rerun(job_id)  # expired again before it was posted
    await any_store.mark_running(job_id, "third")
    await any_store.mark_delivering(job_id, predict_time=20)
    await any_store.mark_done(job_id, result_message_id=1)
    assert await any_store.gpu_seconds_since(GUILD, 0) == GpuSeconds(75)
    assert await any_store.usage_by_member(GUILD, 0) == [(MEMBER, 1, GpuSeconds(75.0))]


async def test_job_for_prediction(any_store: Store) -> None:
    first = await _job_in(any_store, JobStatus.SUBMITTED)
    second = await _job_in(any_store, JobStatus.SUBMITTED)
    await any_store.mark_running(first, "pred-a")
    await any_store.mark_running(second, "pred-b")
    assert await any_store.job_for_prediction("pred-a") == first
    assert await any_store.job_for_prediction("pred-b") == second
    assert await any_store.job_for_prediction("pred-c") is None
    assert await any_store.job_for_prediction("") is None
    # A finished job still owns its prediction (a late webhook finds it).
    await any_store.mark_failed(first, "gone")
    assert await any_store.job_for_prediction("pred-a") == first


async def test_text_with_a_nul_character_is_stored_and_found(any_store: Store) -> None:
    # A hostile API's id, version or error may carry one: SQLite keeps it, PostgreSQL's text
    # cannot hold it, and neither store may fail the job's step over it.
    job_id = await _job_in(any_store, JobStatus.SUBMITTED)
    await any_store.mark_running(job_id, "pred\x00nul")
    assert await any_store.job_for_prediction("pred\x00nul") == job_id
    await any_store.mark_delivering(job_id, predict_time=1.0, model_version="v\x001")
    failed = await any_store.mark_failed(job_id, "broken\x00reason")
    assert failed.error is not None and failed.error[:6] + failed.error[7:] == "brokenreason"
    assert failed.model_version is not None and len(failed.model_version) == 3


async def test_a_prediction_belongs_to_one_job(any_store: Store) -> None:
    first = await _job_in(any_store, JobStatus.SUBMITTED)
    second = await _job_in(any_store, JobStatus.SUBMITTED)
    await any_store.mark_running(first, "same")
    with pytest.raises(Exception):  # noqa: B017 - each database has its own integrity error
        await any_store.mark_running(second, "same")
    assert await any_store.job_for_prediction("same") == first
    job = await any_store.get(second)
    assert job is not None and job.status is JobStatus.SUBMITTED and job.prediction_id is None


async def test_unfinished_lists_pending_jobs_oldest_first(any_store: Store) -> None:
    first = await _add(any_store, guild=1)
    second = await _add(any_store, guild=2)
    canceled = await _add(any_store, guild=1)
    await any_store.mark_canceled(canceled)
    await any_store.mark_submitted(second)
    delivering = await _job_in(any_store, JobStatus.DELIVERING)
    running = await _job_in(any_store, JobStatus.RUNNING)
    for final in (JobStatus.DONE, JobStatus.FAILED):
        await _job_in(any_store, final)
    await any_store.mark_running(second, "p-second")  # a later change does not reorder
    unfinished = await any_store.unfinished()
    assert [job.id for job in unfinished] == [first, second, delivering, running]
    assert [job.status for job in unfinished] == [
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.DELIVERING,
        JobStatus.RUNNING,
    ]


async def test_the_interaction_token_is_kept_until_the_message_id_is_stored(
    any_store: Store,
) -> None:
    job = await any_store.add_job(
        guild_id=1, channel_id=100, requester_id=10, request=_request(), interaction_token=TOKEN
    )
    assert job.interaction_token == TOKEN
    stored = await any_store.get(job.id)
    assert stored is not None and stored.interaction_token == TOKEN
    assert TOKEN not in repr(stored)  # a logged job never shows the credential
    # The steps before the status message exists keep it.
    await any_store.mark_submitted(job.id)
    await any_store.mark_running(job.id, "p1")
    await any_store.mark_rerun(job.id)
    assert [j.interaction_token for j in await any_store.unfinished()] == [TOKEN]
    job = await any_store.set_request_message(job.id, 555)
    assert job.request_message_id == 555 and job.interaction_token is None
    stored = await any_store.get(job.id)
    assert stored is not None and stored.interaction_token is None
    assert stored.request_message_id == 555


@pytest.mark.parametrize("ending", ["done", "failed", "canceled"])
async def test_the_interaction_token_is_cleared_when_the_job_ends(
    any_store: Store, ending: str
) -> None:
    # No message id was ever stored (a crash, failed edits): the token was still kept.
    job_id = await _add(any_store, token=TOKEN)
    other = await _add(any_store, token="another-token")
    await any_store.mark_submitted(job_id)
    await any_store.mark_running(job_id, "p1")
    if ending == "done":
        job = await any_store.mark_delivering(job_id, predict_time=3.0)
        assert job.interaction_token == TOKEN
        job = await any_store.mark_done(job_id, result_message_id=777)
    elif ending == "failed":
        job = await any_store.mark_failed(job_id, "CUDA out of memory")
    else:
        job = await any_store.mark_canceled(job_id, "by request")
    assert job.status.value == ending and job.interaction_token is None
    stored = await any_store.get(job_id)
    assert stored is not None and stored.interaction_token is None
    kept = await any_store.get(other)
    assert kept is not None and kept.interaction_token == "another-token"


async def test_deleted_results_leave_the_history(any_store: Store) -> None:
    job_id = await _spend(any_store, 3)
    kept = await _spend(any_store, 4)
    job = await any_store.mark_deleted(job_id)
    assert job.deleted and job.status is JobStatus.DONE
    stored = await any_store.get(job_id)
    assert stored is not None and stored.deleted
    history = await any_store.history(GUILD, MEMBER, limit=10)
    assert [j.id for j in history] == [kept]
    # What it cost still counts.
    assert await any_store.gpu_seconds_since(GUILD, 0) == GpuSeconds(7)


async def test_history_pages_a_members_requests_newest_first(any_store: Store) -> None:
    ids = []
    for _ in range(5):
        ids.append(await _add(any_store))
        await _add(any_store, user=OTHER_MEMBER)  # someone else's
        await _add(any_store, guild=OTHER_GUILD)  # the same member elsewhere
    a, b, c, d, e = ids

    async def page(
        limit: int = 2, before_id: int | None = None, after_id: int | None = None
    ) -> list[int]:
        jobs = await any_store.history(
            GUILD, MEMBER, limit=limit, before_id=before_id, after_id=after_id
        )
        assert all((j.guild_id, j.requester_id) == (GUILD, MEMBER) for j in jobs)
        return [j.id for j in jobs]

    assert await page() == [e, d]
    assert await page(limit=10) == [e, d, c, b, a]
    assert await page(before_id=d) == [c, b]
    assert await page(before_id=b) == [a]
    assert await page(before_id=a) == []
    # Going back toward newer ones: the `limit` just after the id, still newest first.
    assert await page(after_id=a) == [c, b]
    assert await page(after_id=c) == [e, d]
    assert await page(after_id=d) == [e]
    assert await page(after_id=e) == []
    await any_store.mark_deleted(c)
    assert await page(limit=10) == [e, d, b, a]
    assert await page(before_id=d) == [b, a]
    assert await page(after_id=b) == [e, d]
    assert await any_store.history(GUILD, 99, limit=10) == []
    history = await any_store.history(OTHER_GUILD, MEMBER, limit=1)
    assert len(history) == 1 and history[0].id == e + 2


async def test_history_next_to_a_forged_id_pages_from_the_ends(any_store: Store) -> None:
    # The id of a history button comes back in its custom_id: any digits at all.
    first, second = await _add(any_store), await _add(any_store)
    for huge in (2**63, 2**70):
        assert [j.id for j in await any_store.history(GUILD, MEMBER, limit=5, before_id=huge)] == [
            second,
            first,
        ]
        assert await any_store.history(GUILD, MEMBER, limit=5, after_id=huge) == []
        assert await any_store.history(GUILD, MEMBER, limit=5, before_id=-huge) == []
        after = await any_store.history(GUILD, MEMBER, limit=1, after_id=-huge)
        assert [j.id for j in after] == [first]
    assert await any_store.history(GUILD, MEMBER, limit=5, before_id=0) == []
    assert [j.id for j in await any_store.history(GUILD, MEMBER, limit=5, after_id=0)] == [
        second,
        first,
    ]


# ---------------------------------------------------------------------------------------------
# Timings

TOON, LYRIEL = "toonyou_beta3.safetensors", "lyriel_v16.safetensors"


async def test_recent_timings_keeps_the_newest_per_model_and_steps_oldest_first(
    any_store: Store,
) -> None:
    assert await any_store.recent_timings(10) == []
    recorded = [
        Timing(TOON, 25, 1.0, 10.0),
        Timing(LYRIEL, 25, 2.0, 20.0),
        Timing(TOON, 30, 3.0, 30.0),  # same model, other steps: its own key
        Timing(TOON, 25, 4.0, 40.0),
        Timing(LYRIEL, 25, 5.0, 50.0),
        Timing(TOON, 25, 6.0, 60.0),
    ]
    for timing in recorded:
        await any_store.record_timing(timing)
    _t1, l2, s3, t4, l5, t6 = recorded
    assert await any_store.recent_timings(100) == recorded
    assert await any_store.recent_timings(2) == [l2, s3, t4, l5, t6]
    assert await any_store.recent_timings(1) == [s3, l5, t6]


async def test_recording_many_timings_keeps_the_newest(any_store: Store) -> None:
    for run in range(150):
        await any_store.record_timing(Timing(TOON, 25, 0.5, float(run)))
    await any_store.record_timing(Timing(LYRIEL, 10, 2.0, 7.0))
    newest = await any_store.recent_timings(20)
    assert newest == [Timing(TOON, 25, 0.5, float(run)) for run in range(130, 150)] + [
        Timing(LYRIEL, 10, 2.0, 7.0)
    ]


# ---------------------------------------------------------------------------------------------
# Server settings and bans


async def test_guild_settings_are_put_replaced_and_deleted(any_store: Store) -> None:
    assert await any_store.guild_settings() == []
    await any_store.put_guild_setting(GUILD, "steps", "9", updated_by=MEMBER)
    await any_store.put_guild_setting(GUILD, "blocked_patterns", '["gor*", "🎉"]', updated_by=5)
    await any_store.put_guild_setting(OTHER_GUILD, "steps", "12", updated_by=MEMBER)
    assert sorted(await any_store.guild_settings()) == [
        (GUILD, "blocked_patterns", '["gor*", "🎉"]'),
        (GUILD, "steps", "9"),
        (OTHER_GUILD, "steps", "12"),
    ]
    await any_store.put_guild_setting(GUILD, "steps", "20", updated_by=OTHER_MEMBER)
    assert sorted(await any_store.guild_settings()) == [
        (GUILD, "blocked_patterns", '["gor*", "🎉"]'),
        (GUILD, "steps", "20"),
        (OTHER_GUILD, "steps", "12"),
    ]
    await any_store.delete_guild_setting(GUILD, "steps")
    await any_store.delete_guild_setting(GUILD, "never_set")  # nothing to forget: no error
    await any_store.delete_guild_setting(3, "steps")
    assert sorted(await any_store.guild_settings()) == [
        (GUILD, "blocked_patterns", '["gor*", "🎉"]'),
        (OTHER_GUILD, "steps", "12"),
    ]
    await any_store.put_guild_setting(GUILD, "steps", "7", updated_by=MEMBER)  # set again
    assert (GUILD, "steps", "7") in await any_store.guild_settings()


async def test_bans_are_per_server_and_member(any_store: Store) -> None:
    assert not await any_store.is_banned(GUILD, MEMBER)
    assert await any_store.ban(GUILD, MEMBER, banned_by=OTHER_MEMBER)
    assert not await any_store.ban(GUILD, MEMBER, banned_by=99)  # already banned
    assert await any_store.is_banned(GUILD, MEMBER)
    assert not await any_store.is_banned(OTHER_GUILD, MEMBER)
    assert not await any_store.is_banned(GUILD, OTHER_MEMBER)
    assert await any_store.ban(OTHER_GUILD, MEMBER, banned_by=OTHER_MEMBER)
    assert await any_store.unban(GUILD, MEMBER)
    assert not await any_store.unban(GUILD, MEMBER)  # no longer banned
    assert not await any_store.unban(GUILD, OTHER_MEMBER)  # never was
    assert not await any_store.is_banned(GUILD, MEMBER)
    assert await any_store.is_banned(OTHER_GUILD, MEMBER)
    assert await any_store.ban(GUILD, MEMBER, banned_by=OTHER_MEMBER)  # banned again
    assert await any_store.is_banned(GUILD, MEMBER)


# ---------------------------------------------------------------------------------------------
# Usage


async def test_requests_since_skips_those_never_sent(
    any_store: Store, store_clock: StoreClock
) -> None:
    store_clock.now = START - 10
    await _spend(any_store, 1)  # earlier
    store_clock.now = START
    await _add(any_store)  # queued: counted, it will be sent
    await _job_in(any_store, JobStatus.RUNNING)
    await _spend(any_store, 2)
    sent_then_failed = await _job_in(any_store, JobStatus.SUBMITTED)
    await any_store.mark_failed(sent_then_failed, "refused")
    sent_then_canceled = await _job_in(any_store, JobStatus.SUBMITTED)
    await any_store.mark_canceled(sent_then_canceled)
    await _job_in(any_store, JobStatus.CANCELED)  # canceled while queued: never sent
    await _job_in(any_store, JobStatus.FAILED)  # failed while queued: never sent
    await _add(any_store, user=OTHER_MEMBER)
    await _add(any_store, guild=OTHER_GUILD)
    store_clock.now = START + 10  # when they are counted does not matter, only when made
    assert await any_store.requests_since(GUILD, MEMBER, START) == 5
    assert await any_store.requests_since(GUILD, MEMBER, START - 10) == 6
    assert await any_store.requests_since(GUILD, MEMBER, START + 0.5) == 0
    assert await any_store.requests_since(GUILD, OTHER_MEMBER, START) == 1
    assert await any_store.requests_since(OTHER_GUILD, MEMBER, START) == 1
    assert await any_store.requests_since(OTHER_GUILD, OTHER_MEMBER, 0) == 0


async def test_gpu_seconds_since_sums_a_servers_requests(
    any_store: Store, store_clock: StoreClock
) -> None:
    assert await any_store.gpu_seconds_since(GUILD, 0) == GpuSeconds(0.0)
    store_clock.now = START - DAY
    await _spend(any_store, 100)
    store_clock.now = START
    await _spend(any_store, 10)
    await _spend(any_store, 2.5, user=OTHER_MEMBER)
    await _job_in(any_store, JobStatus.CANCELED)  # never ran: costs nothing
    failed = await _job_in(any_store, JobStatus.RUNNING)
    await any_store.mark_failed(failed, "broken", predict_time=4)
    await _spend(any_store, 7, guild=OTHER_GUILD)
    assert await any_store.gpu_seconds_since(GUILD, START) == GpuSeconds(16.5)
    assert await any_store.gpu_seconds_since(GUILD, START - DAY) == GpuSeconds(116.5)
    assert await any_store.gpu_seconds_since(GUILD, START + 1) == GpuSeconds(0.0)
    assert await any_store.gpu_seconds_since(OTHER_GUILD, 0) == GpuSeconds(7.0)


async def test_usage_by_utc_day_and_by_member(any_store: Store, store_clock: StoreClock) -> None:
    assert await any_store.usage_by_day(GUILD, 0) == []
    assert await any_store.usage_by_member(GUILD, 0) == []
    since = START - 30 * DAY
    store_clock.now = since - 1
    await _spend(any_store, 1000)  # just too old to show
    store_clock.now = START - 2 * DAY
    await _spend(any_store, 10)
    await _spend(any_store, 20, user=OTHER_MEMBER)
    await _job_in(any_store, JobStatus.CANCELED)  # never ran: not a prediction
    await _job_in(any_store, JobStatus.SUBMITTED)  # not run yet: not a prediction
    failed = await _job_in(any_store, JobStatus.RUNNING)
    await any_store.mark_failed(failed, "broken", predict_time=4)  # billed: counted
    store_clock.now = START - 3_600 + DAY - 1  # 23:59:59 UTC, still today
    await _spend(any_store, 5)
    rerun = await _job_in(any_store, JobStatus.RUNNING)
    await any_store.mark_delivering(rerun, predict_time=30)
    await any_store.mark_rerun(rerun)  # billed once already, running again
    await _spend(any_store, 7, guild=OTHER_GUILD)
    assert await any_store.usage_by_day(GUILD, since) == [
        (TODAY - 2, 3, GpuSeconds(34.0)),
        (TODAY, 2, GpuSeconds(35.0)),
    ]
    assert await any_store.usage_by_day(GUILD, START) == [(TODAY, 2, GpuSeconds(35.0))]
    assert await any_store.usage_by_day(OTHER_GUILD, since) == [(TODAY, 1, GpuSeconds(7.0))]
    assert await any_store.usage_by_member(GUILD, since) == [
        (MEMBER, 4, GpuSeconds(49.0)),
        (OTHER_MEMBER, 1, GpuSeconds(20.0)),
    ]
    assert await any_store.usage_by_member(GUILD, START) == [(MEMBER, 2, GpuSeconds(35.0))]
    assert await any_store.usage_by_member(GUILD, 0) == [
        (MEMBER, 5, GpuSeconds(1049.0)),
        (OTHER_MEMBER, 1, GpuSeconds(20.0)),
    ]


async def test_usage_by_member_breaks_ties_by_member_id(any_store: Store) -> None:
    for user in (30, 12, 21):
        await _spend(any_store, 5, user=user)
    await _spend(any_store, 6, user=40)
    assert await any_store.usage_by_member(GUILD, 0) == [
        (40, 1, GpuSeconds(6.0)),
        (12, 1, GpuSeconds(5.0)),
        (21, 1, GpuSeconds(5.0)),
        (30, 1, GpuSeconds(5.0)),
    ]


async def _run_on(store: Store, prediction_id: str, seconds: float, *, user: int = MEMBER) -> int:
    """A request whose prediction `prediction_id` ran for `seconds` and was delivered."""
    job_id = await _add(store, user=user)
    await store.mark_submitted(job_id)
    await store.mark_running(job_id, prediction_id)
    await store.mark_delivering(job_id, predict_time=seconds)
    await store.mark_done(job_id, result_message_id=job_id)
    return job_id


async def test_usage_splits_gpu_seconds_by_where_they_ran(
    any_store: Store, store_clock: StoreClock
) -> None:
    store_clock.now = START - 2 * DAY
    await _run_on(any_store, "cog:gpu-a:job-1-r0", 10)
    await _run_on(any_store, "wdmbfhwm2srm80ckzbqa2vn2ym", 4)  # Replicate's
    store_clock.now = START
    await _run_on(any_store, "cog:gpu-b:job-3-r0", 30, user=OTHER_MEMBER)
    # Ids that only look like ours ran on Replicate (or a gateway): the prefix is exact.
    await _run_on(any_store, "COG:gpu-a:job-4-r0", 2)
    await _run_on(any_store, "cogwheel-5", 1)
    failed = await _add(any_store)
    await any_store.mark_submitted(failed)
    await any_store.mark_running(failed, "cog:gpu-a:job-6-r0")
    await any_store.mark_failed(failed, "broken", predict_time=3)  # billed on the own GPU
    rerun = await _add(any_store, user=OTHER_MEMBER)
    await any_store.mark_submitted(rerun)
    await any_store.mark_running(rerun, "cog:gpu-a:job-7-r0")
    await any_store.mark_delivering(rerun, predict_time=6)
    await any_store.mark_rerun(rerun)  # the output expired: made again on the same kind
    await any_store.mark_running(rerun, "cog:gpu-b:job-7-r1")
    await any_store.mark_delivering(rerun, predict_time=5)
    await _job_in(any_store, JobStatus.CANCELED)  # never ran: nowhere
    await _spend(any_store, 50, guild=OTHER_GUILD)

    assert await any_store.gpu_seconds_since(GUILD, START) == GpuSeconds(3.0, 44.0)
    assert await any_store.gpu_seconds_since(GUILD, 0) == GpuSeconds(7.0, 54.0)
    assert await any_store.gpu_seconds_since(OTHER_GUILD, 0) == GpuSeconds(50.0, 0.0)
    assert await any_store.usage_by_day(GUILD, 0) == [
        (TODAY - 2, 2, GpuSeconds(4.0, 10.0)),
        (TODAY, 5, GpuSeconds(3.0, 44.0)),
    ]
    # Biggest first by every GPU second, wherever it ran.
    assert await any_store.usage_by_member(GUILD, 0) == [
        (OTHER_MEMBER, 2, GpuSeconds(0.0, 41.0)),
        (MEMBER, 5, GpuSeconds(7.0, 13.0)),
    ]


# ---------------------------------------------------------------------------------------------
# The store itself


async def test_schema_version_is_set_and_stable(any_store: Store) -> None:
    version = await any_store.schema_version()
    assert isinstance(version, int) and version >= 1
    await _spend(any_store, 1)
    assert await any_store.schema_version() == version


async def test_probe_write_leaves_nothing_behind(any_store: Store) -> None:
    await any_store.probe_write()
    await any_store.probe_write()  # the first one's transaction is over
    assert await any_store.recent_timings(per_key=10) == []
    assert await any_store.unfinished() == []
    assert await any_store.guild_settings() == []
    # And the store still writes and reads as before.
    job_id = await _add(any_store)
    await any_store.record_timing(Timing(TOON, 25, 1.0, 2.0))
    assert [j.id for j in await any_store.unfinished()] == [job_id]
    assert await any_store.recent_timings(per_key=10) == [Timing(TOON, 25, 1.0, 2.0)]


async def test_a_probe_beside_transitions_rolls_back_only_itself(
    any_store_and_reader: tuple[Store, Store],
) -> None:
    store, reader = any_store_and_reader
    job_ids = [await _add(store) for _ in range(20)]
    # Each step runs every job's transition at once with probes in between, as /healthz does
    # while jobs move on; a probe sharing a transaction with a transition would undo it.
    steps: list[tuple[JobStatus, Callable[[int], Awaitable[Job]]]] = [
        (JobStatus.SUBMITTED, store.mark_submitted),
        (JobStatus.RUNNING, lambda job_id: store.mark_running(job_id, f"p{job_id}")),
        (JobStatus.DELIVERING, lambda job_id: store.mark_delivering(job_id, predict_time=1.0)),
    ]
    for status, transition in steps:
        calls: list[Awaitable[object]] = []
        for job_id in job_ids:
            calls += [store.probe_write(), transition(job_id)]
        await asyncio.gather(*calls)
        for job_id in job_ids:
            job = await reader.get(job_id)
            assert job is not None and job.status is status, (job_id, job)
    assert await reader.recent_timings(per_key=10) == []


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_a_cancelled_probe_leaves_later_writes_committed(
    any_store_and_reader: tuple[Store, Store], yields: int
) -> None:
    store, reader = any_store_and_reader
    probe = asyncio.create_task(store.probe_write())
    for _ in range(yields):  # cancel it at a different point of its work each time
        await asyncio.sleep(0)
    probe.cancel()
    (outcome,) = await asyncio.gather(probe, return_exceptions=True)
    assert outcome is None or isinstance(outcome, asyncio.CancelledError), outcome
    job_id = await _add(store)
    await store.mark_submitted(job_id)
    job = await reader.get(job_id)
    assert job is not None and job.status is JobStatus.SUBMITTED
    await store.probe_write()  # and the next probe works
    assert await reader.recent_timings(per_key=10) == []
