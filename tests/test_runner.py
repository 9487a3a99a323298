"""The life of one job against an in-memory Backend, with the real store and scheduler.

The fake backend answers from a script and records every call; its hooks read the store at
the moment of each call, which shows that every step was stored before the next began.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from bot.backends.base import (
    BackendFeatures,
    CreateOutcomeUnknown,
    Prediction,
    PredictionAPIError,
    PredictionNotFound,
    ServiceUnavailable,
)
from bot.core.jobs import Job, JobStatus
from bot.core.reporter import CancelOutcome
from bot.core.runner import MAX_RERUNS
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.conftest import opened_store
from tests.scheduling import RecordingReporter, request, started_scheduler, submit

SAMPLE = Path(__file__).resolve().parent / "data" / "animatediff-sample.mp4"
SAMPLE_SIZE = SAMPLE.stat().st_size

Hook = Callable[[], Awaitable[None]]
# What one `get` answers: a status, or an error it raises. The last step repeats.
Step = str | PredictionAPIError
# What one `create` does instead of answering: raise (nothing made), or make the prediction
# and lose the answer ("lost").
CreateFault = PredictionAPIError | Literal["lost"]


@dataclass
class Upstream:
    """One prediction as the fake service holds it."""

    id: str
    input: dict[str, Any]
    created: float  # wall clock
    plan: deque[Step]
    expired: bool
    state: Prediction


@dataclass
class FakeBackend:
    """An in-memory Backend: scripted answers, a record of calls, a real MP4 to download."""

    features: BackendFeatures = field(
        default_factory=lambda: BackendFeatures(polling=True, pushes=False, search=True)
    )
    plan: list[Step] = field(default_factory=lambda: ["processing", "succeeded"])
    create_faults: deque[CreateFault] = field(default_factory=deque)
    expire_first: int = 0  # the outputs of this many first predictions are gone when read
    failure: str = "CUDA out of memory"
    on_create: Hook | None = None
    on_get: Hook | None = None
    on_download: Hook | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, prediction id)
    create_inputs: list[dict[str, Any]] = field(default_factory=list)
    finds: list[float] = field(default_factory=list)  # `created_after` of each find
    downloads: list[str] = field(default_factory=list)
    upstream: dict[str, Upstream] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _called: asyncio.Event = field(default_factory=asyncio.Event)

    def has_capacity(self, starting: int) -> bool:
        return True  # like Replicate: it queues what it cannot start yet

    def count(self, method: str) -> int:
        return sum(1 for called, _ in self.calls if called == method)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until the calls made so far satisfy `predicate`."""
        async with asyncio.timeout(5):
            while not predicate():
                await self._called.wait()

    def _record(self, method: str, prediction_id: str = "") -> None:
        self.calls.append((method, prediction_id))
        self._called.set()
        self._called = asyncio.Event()

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
        self._record("create")
        self.create_inputs.append(dict(api_input))
        fault = self.create_faults.popleft() if self.create_faults else None
        if isinstance(fault, PredictionAPIError):
            raise fault
        number = next(self._ids)
        prediction_id = f"p{number}"
        self.upstream[prediction_id] = Upstream(
            id=prediction_id,
            input=dict(api_input),
            created=time.time(),
            plan=deque(self.plan),
            expired=number <= self.expire_first,
            state=Prediction(id=prediction_id, status="starting", input=dict(api_input)),
        )
        if self.on_create is not None:
            await self.on_create()
        if fault == "lost":
            raise CreateOutcomeUnknown("the create timed out")
        return self.upstream[prediction_id].state

    async def get(self, prediction_id: str) -> Prediction:
        self._record("get", prediction_id)
        if self.on_get is not None:
            await self.on_get()
        held = self.upstream.get(prediction_id)
        if held is None:
            raise PredictionNotFound("Prediction not found", status=404)
        step = held.plan.popleft() if len(held.plan) > 1 else held.plan[0]
        if isinstance(step, PredictionAPIError):
            raise step
        held.state = self._state(held, step)
        return held.state

    async def get_once(self, prediction_id: str, *, timeout: float) -> Prediction:
        return await self.get(prediction_id)

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
    ) -> Prediction | None:
        self._record("find")
        self.finds.append(created_after)
        for held in reversed(self.upstream.values()):
            if held.input != dict(api_input) or held.created < created_after:
                continue
            if accept is None or await accept(held.state):
                return held.state
        return None

    async def cancel(self, prediction_id: str) -> Prediction:
        self._record("cancel", prediction_id)
        held = self.upstream.get(prediction_id)
        if held is None:
            raise PredictionNotFound("Prediction not found", status=404)
        # Stopping takes a moment: the next reads still say processing.
        held.plan = deque(["processing", "processing", "canceled"])
        return held.state

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        self._record("download", url.rsplit("/", 1)[-1].removesuffix(".mp4"))
        self.downloads.append(url)
        if self.on_download is not None:
            await self.on_download()
        shutil.copyfile(SAMPLE, dest)
        return SAMPLE_SIZE

    def _state(self, held: Upstream, status: str) -> Prediction:
        output: str | None = None
        metrics: dict[str, Any] = {}
        error: str | None = None
        removed = False
        if status == "succeeded":
            removed = held.expired
            output = None if removed else f"https://files.example/{held.id}.mp4"
            metrics = {"predict_time": 12.5}
        elif status == "failed":
            error = self.failure
            metrics = {"predict_time": 3.0}
        return Prediction(
            id=held.id,
            status=status,
            input=held.input,
            output=output,
            error=error,
            metrics=metrics,
            version="v1",
            data_removed=removed,
        )


async def stored(store: SQLiteStore, job_id: int) -> Job:
    job = await store.get(job_id)
    assert job is not None
    return job


async def finished(scheduler: Scheduler, store: SQLiteStore, job_id: int) -> Job:
    """Wait until nothing runs and return the job as stored."""
    async with asyncio.timeout(5):
        await scheduler.wait_idle()
    return await stored(store, job_id)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
async def scheduler(
    store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter, tmp_path: Path
) -> AsyncIterator[Scheduler]:
    """The real scheduler on the fake backend, started (`store` is on conftest's `db_path`)."""
    async with started_scheduler(store, backend, reporter, work_root=tmp_path / "work") as started:
        yield started


@contextlib.asynccontextmanager
async def bot_process(
    db_path: Path, backend: FakeBackend, work_root: Path
) -> AsyncIterator[tuple[Scheduler, RecordingReporter, SQLiteStore]]:
    """A bot process on the file `db_path`: its store, and a started scheduler with a new
    reporter; the scheduler stops, then the store closes, at the end of the block."""
    reporter = RecordingReporter()
    async with (
        opened_store(db_path) as store,
        started_scheduler(store, backend, reporter, work_root=work_root) as scheduler,
    ):
        yield scheduler, reporter, store


# The whole life -----------------------------------------------------------------------------


async def test_each_step_is_stored_before_the_next(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    job, position = await scheduler.submit(
        guild_id=1, channel_id=100, requester_id=10, request=request()
    )
    assert position == 1
    assert (await stored(store, job.id)).status is JobStatus.QUEUED
    await asyncio.sleep(0.02)
    assert backend.calls == []  # held until its status message exists

    seen: list[tuple[str, JobStatus, str | None]] = []

    def looking(step: str) -> Hook:
        async def look() -> None:
            now = await stored(store, job.id)
            seen.append((step, now.status, now.prediction_id))

        return look

    backend.on_create = looking("create")
    backend.on_get = looking("get")
    backend.on_download = looking("download")
    await scheduler.attach_message(job.id, 5000 + job.id)
    await reporter.wait_for(lambda: reporter.delivered)
    done = await finished(scheduler, store, job.id)

    gets = backend.count("get")
    assert gets >= 1
    assert seen == [
        ("create", JobStatus.SUBMITTED, None),
        *[("get", JobStatus.RUNNING, "p1")] * gets,
        ("download", JobStatus.DELIVERING, "p1"),
    ]
    assert backend.count("create") == 1 and backend.count("download") == 1
    assert backend.count("find") == 0 and backend.count("cancel") == 0
    assert backend.create_inputs == [request().to_api_input()]
    assert backend.downloads == ["https://files.example/p1.mp4"]
    assert done.status is JobStatus.DONE
    assert done.prediction_id == "p1" and done.result_message_id == 9000
    assert done.predict_time == 12.5 and done.model_version == "v1"
    assert done.submitted_at is not None and done.started_at is not None
    assert done.completed_at is not None and done.error is None
    assert reporter.files == [SAMPLE.read_bytes()]  # it fits: posted as made
    assert not reporter.failures and not reporter.canceled


# Creating exactly once ----------------------------------------------------------------------


async def test_a_lost_create_answer_is_found_not_created_again(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.create_faults.append("lost")
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    done = await finished(scheduler, store, job.id)
    assert backend.count("create") == 1
    assert backend.count("find") == 1
    assert backend.finds == [done.submitted_at]  # only predictions made since it was sent
    assert list(backend.upstream) == ["p1"]
    assert done.status is JobStatus.DONE and done.prediction_id == "p1"
    assert backend.count("download") == 1
    assert not reporter.failures


NOT_SENT_AGAIN = (
    "The bot could not confirm whether the animation service had started this request, so it "
    "did not send it again; please try again."
)


async def test_a_lost_create_that_never_arrived_is_sent_again_after_the_search(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.create_faults.append(CreateOutcomeUnknown("connection reset"))
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    done = await finished(scheduler, store, job.id)
    # The search found nothing: the create was sent once more and made the only prediction.
    assert [method for method, _ in backend.calls[:3]] == ["create", "find", "create"]
    assert backend.count("create") == 2 and backend.count("find") == 1
    assert list(backend.upstream) == ["p1"]
    assert done.status is JobStatus.DONE and done.prediction_id == "p1"


async def test_without_search_a_lost_create_fails_rather_than_pay_twice(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.features = BackendFeatures(polling=True, pushes=False, search=False)
    backend.create_faults.append("lost")
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.failures)
    done = await finished(scheduler, store, job.id)
    assert backend.count("find") == 0
    assert backend.count("create") == 1
    assert done.status is JobStatus.FAILED
    assert reporter.failures[0][1] == NOT_SENT_AGAIN


async def test_an_unavailable_service_is_waited_out_without_a_search(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.create_faults.extend([ServiceUnavailable("502 Bad Gateway")] * 2)
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    done = await finished(scheduler, store, job.id)
    assert backend.count("create") == 3  # refused before it reached the API: no search
    assert backend.count("find") == 0
    assert done.status is JobStatus.DONE and done.prediction_id == "p1"
    assert not scheduler.outage.active


async def test_a_refused_create_fails_the_job_with_the_apis_reason(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.create_faults.append(PredictionAPIError("steps must be at most 100", status=422))
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.failures)
    failed = await finished(scheduler, store, job.id)
    reason = "The animation service refused the request: steps must be at most 100"
    assert failed.status is JobStatus.FAILED and failed.error == reason
    assert [r for _, r in reporter.failures] == [reason]
    assert backend.count("create") == 1 and backend.count("get") == 0


# How a prediction ends ----------------------------------------------------------------------


async def test_a_failed_prediction_fails_the_job_with_the_reason(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.plan = ["processing", "failed"]
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.failures)
    failed = await finished(scheduler, store, job.id)
    reason = "The animation failed: CUDA out of memory"
    assert [(j.id, r) for j, r in reporter.failures] == [(job.id, reason)]
    assert failed.status is JobStatus.FAILED and failed.error == reason
    assert failed.predict_time == 3.0  # the GPU time it was billed is kept
    assert backend.count("download") == 0 and not reporter.delivered


async def test_cancel_while_running_cancels_upstream_once(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.plan = ["processing"]  # runs until canceled
    job = await submit(scheduler)
    await backend.until(lambda: backend.count("get") >= 1)
    running = await stored(store, job.id)
    assert running.status is JobStatus.RUNNING
    assert await scheduler.cancel(job.id) is CancelOutcome.CANCELING
    await reporter.wait_for(lambda: reporter.canceled)
    canceled = await finished(scheduler, store, job.id)
    assert backend.calls.count(("cancel", "p1")) == 1 and backend.count("cancel") == 1
    assert running.prediction_id == "p1"
    # It kept reading until the service said it stopped.
    assert backend.upstream["p1"].state.status == "canceled"
    assert canceled.status is JobStatus.CANCELED and canceled.error == "Canceled."
    assert [j.id for j in reporter.canceled] == [job.id]
    assert not reporter.delivered and not reporter.failures
    assert backend.count("download") == 0
    assert await scheduler.cancel(job.id) is CancelOutcome.TOO_LATE


async def test_a_prediction_the_service_does_not_know_fails_the_job(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.plan = [PredictionNotFound("Prediction not found", status=404)]
    job = await submit(scheduler)
    await reporter.wait_for(lambda: reporter.failures)
    failed = await finished(scheduler, store, job.id)
    reason = "The animation service has no record of this request."
    assert [r for _, r in reporter.failures] == [reason]
    assert failed.status is JobStatus.FAILED and failed.error == reason
    assert backend.count("get") == 1 and backend.count("create") == 1
    assert backend.count("cancel") == 0 and backend.count("download") == 0


async def test_an_expired_output_is_made_again_with_the_same_input_and_seed(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.expire_first = 1
    job = await submit(scheduler, seed=4242)
    await reporter.wait_for(lambda: reporter.delivered)
    done = await finished(scheduler, store, job.id)
    assert backend.count("create") == 2
    assert backend.create_inputs[0] == backend.create_inputs[1]
    assert backend.create_inputs[1]["seed"] == 4242
    assert done.status is JobStatus.DONE and done.prediction_id == "p2"
    assert done.reruns == 1
    assert backend.downloads == ["https://files.example/p2.mp4"]
    assert not reporter.failures


async def test_an_output_that_keeps_expiring_is_rerun_at_most_max_reruns_times(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.expire_first = 99
    job = await submit(scheduler, seed=4242)
    await reporter.wait_for(lambda: reporter.failures)
    failed = await finished(scheduler, store, job.id)
    assert MAX_RERUNS >= 1
    assert backend.count("create") == MAX_RERUNS + 1
    assert all(sent == backend.create_inputs[0] for sent in backend.create_inputs)
    assert backend.create_inputs[0]["seed"] == 4242
    reason = "The animation expired at the animation service before the bot could post it."
    assert failed.status is JobStatus.FAILED and failed.error == reason
    assert failed.reruns == MAX_RERUNS
    assert [r for _, r in reporter.failures] == [reason]
    assert backend.count("download") == 0 and not reporter.delivered


# Restarts -------------------------------------------------------------------------------------


async def test_a_restart_resumes_a_running_job_by_polling_it(
    db_path: Path, backend: FakeBackend, tmp_path: Path
) -> None:
    backend.plan = ["processing"]  # still running when the bot stops
    work = tmp_path / "work"
    async with bot_process(db_path, backend, work) as (first, first_reporter, store):
        job = await submit(first)
        await backend.until(lambda: backend.count("get") >= 1)
        assert (await stored(store, job.id)).status is JobStatus.RUNNING
    assert backend.count("create") == 1
    assert not first_reporter.delivered and not first_reporter.failures

    # The prediction finished while the bot was away; a new process opens the same file.
    backend.upstream["p1"].plan = deque(["succeeded"])
    backend.calls.clear()
    async with opened_store(db_path) as store:  # as the new process finds it, before it starts
        assert (await stored(store, job.id)).status is JobStatus.RUNNING
    async with bot_process(db_path, backend, work) as (second, reporter, store):
        await reporter.wait_for(lambda: reporter.delivered)
        done = await finished(second, store, job.id)
    assert backend.count("create") == 0 and backend.count("find") == 0
    assert backend.calls[0] == ("get", "p1")
    assert backend.count("download") == 1
    assert done.status is JobStatus.DONE and done.prediction_id == "p1"
    assert reporter.delivered[0][0].request_message_id == 5000 + job.id
    assert not reporter.announced  # its status message was recorded before the restart


@pytest.mark.parametrize("search", [True, False])
async def test_a_restart_mid_create_finds_the_prediction_when_it_can(
    db_path: Path, backend: FakeBackend, tmp_path: Path, search: bool
) -> None:
    never = asyncio.Event()

    async def hang() -> None:
        await never.wait()  # the create reached the API; its answer never comes back

    backend.on_create = hang
    work = tmp_path / "work"
    async with opened_store(db_path) as store:
        async with started_scheduler(store, backend, RecordingReporter(), work_root=work) as first:
            job = await submit(first)
            await backend.until(lambda: backend.count("create") == 1)
        assert (await stored(store, job.id)).status is JobStatus.SUBMITTED  # once stopped

    backend.on_create = None
    backend.features = BackendFeatures(polling=True, pushes=False, search=search)
    backend.calls.clear()
    async with bot_process(db_path, backend, work) as (second, reporter, store):
        await reporter.wait_for(lambda: reporter.delivered or reporter.failures)
        done = await finished(second, store, job.id)
    if search:
        assert done.status is JobStatus.DONE
        assert backend.count("find") == 1 and backend.count("create") == 0
        assert done.prediction_id == "p1"
    else:
        # Nothing can find it, and sending it again could pay twice: it fails, and says why.
        assert backend.count("find") == 0 and backend.count("create") == 0
        assert done.status is JobStatus.FAILED and done.error == NOT_SENT_AGAIN


async def test_a_backend_that_cannot_be_polled_is_followed_by_its_pushes_alone(
    scheduler: Scheduler, store: SQLiteStore, backend: FakeBackend, reporter: RecordingReporter
) -> None:
    backend.features = BackendFeatures(polling=False, pushes=True, search=True)
    job = await submit(scheduler)
    await backend.until(lambda: backend.count("create") == 1)
    await asyncio.sleep(0.1)  # ten turns of its (shortened) waits: it asks nothing meanwhile
    assert (await stored(store, job.id)).status is JobStatus.RUNNING
    assert backend.count("get") == 0 and not reporter.delivered
    held = backend.upstream["p1"]
    scheduler.push(backend._state(held, "processing"))
    scheduler.push(backend._state(held, "succeeded"))
    await reporter.wait_for(lambda: reporter.delivered)
    done = await finished(scheduler, store, job.id)
    assert done.status is JobStatus.DONE and done.prediction_id == "p1"
    assert backend.count("get") == 0 and backend.count("download") == 1


async def test_without_polling_a_resumed_job_reads_its_prediction_once(
    db_path: Path, backend: FakeBackend, tmp_path: Path
) -> None:
    backend.plan = ["processing"]
    work = tmp_path / "work"
    async with bot_process(db_path, backend, work) as (first, _, store):
        job = await submit(first)
        await backend.until(lambda: backend.count("get") >= 1)
    # It started an hour ago (well past the start time-out) and ended while the bot was away.
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE jobs SET started_at = started_at - 3600 WHERE id = ?", (job.id,))
    backend.upstream["p1"].plan = deque(["succeeded"])
    backend.features = BackendFeatures(polling=False, pushes=True, search=True)
    backend.calls.clear()
    async with bot_process(db_path, backend, work) as (second, reporter, store):
        await reporter.wait_for(lambda: reporter.delivered or reporter.failures)
        done = await finished(second, store, job.id)
    assert not reporter.failures and done.status is JobStatus.DONE
    assert [call for call in backend.calls if call[0] != "download"] == [("get", "p1")]
