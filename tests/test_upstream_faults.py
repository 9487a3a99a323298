"""Guarantee 2: every upstream fault ends in a delivered result or a clear message, and the
queue keeps moving. The real scheduler, store and client run against the fake prediction API,
which scripts each fault at the protocol level."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.core.reporter import JobStatusUpdate, Stage
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.scheduling import (
    RecordingReporter,
    make_scheduler,
    request,
    started_scheduler,
    submit,
)

HTML_ERROR = "<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"
CREATE, POLL, LIST = r"/v1/predictions", r"/v1/predictions/[^/]+", r"/v1/predictions"


async def _no_sleep(_seconds: float) -> None:
    """Backoff that does not wait."""


@pytest.fixture
def client(http: aiohttp.ClientSession, prediction_api: FakePredictionAPI) -> PredictionClient:
    """A client that polls (1 s create window), gives up on a silent API in 0.3 s."""
    return PredictionClient(
        http,
        base_url=prediction_api.base_url,
        token=prediction_api.token,
        version=prediction_api.version,
        wait_seconds=1,
        request_timeout=0.3,
        sleep=_no_sleep,
    )


@dataclass(frozen=True)
class Fault:
    """One scripted fault: where it strikes and what the fake answers."""

    method: str
    path: str
    status: int = 500
    body: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] | None = None
    times: int = 1
    drop: bool = False
    delay: float = 0.0
    after_create: bool = False


SURVIVABLE = {
    "create 429 with Retry-After": Fault("POST", CREATE, 429, headers={"Retry-After": "1"}),
    "create 429 without Retry-After": Fault("POST", CREATE, 429, times=3),
    "create 500 HTML": Fault("POST", CREATE, 500, HTML_ERROR, "text/html"),
    "create 502 HTML": Fault("POST", CREATE, 502, HTML_ERROR, "text/html", times=2),
    "create 503 HTML": Fault("POST", CREATE, 503, HTML_ERROR, "text/html"),
    "create dropped before it ran": Fault("POST", CREATE, drop=True),
    "create dropped after it ran": Fault("POST", CREATE, drop=True, after_create=True),
    "create timed out after it ran": Fault("POST", CREATE, delay=1.0, after_create=True),
    "create answered malformed JSON after it ran": Fault(
        "POST", CREATE, 201, '{"id": "abc", "status":', after_create=True
    ),
    "create answered 500 after it ran": Fault("POST", CREATE, 500, after_create=True),
    "poll 500 HTML": Fault("GET", POLL, 500, HTML_ERROR, "text/html", times=3),
    "poll 503 HTML": Fault("GET", POLL, 503, HTML_ERROR, "text/html", times=8),
    "poll 429": Fault("GET", POLL, 429, headers={"Retry-After": "1"}, times=2),
    "poll dropped": Fault("GET", POLL, drop=True, times=2),
    "poll timed out": Fault("GET", POLL, delay=1.0),
    "poll malformed JSON": Fault("GET", POLL, 200, "{not json", times=2),
    "list 502 while finding": Fault("GET", LIST, 502, HTML_ERROR, "text/html", times=2),
}


def inject(api: FakePredictionAPI, fault: Fault) -> None:
    """Script a fault on the fake API."""
    api.inject(
        fault.method,
        fault.path,
        status=fault.status,
        body=fault.body,
        headers=fault.headers,
        content_type=fault.content_type,
        times=fault.times,
        drop=fault.drop,
        delay=fault.delay,
        after_create=fault.after_create,
    )


@pytest.mark.parametrize("name", SURVIVABLE)
async def test_transient_faults_end_in_one_delivered_result(
    name: str,
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    fault = SURVIVABLE[name]
    if fault.path == LIST:
        # The list is read only when a create's outcome is unknown: make one unknown.
        inject(prediction_api, Fault("POST", CREATE, drop=True, after_create=True))
    inject(prediction_api, fault)
    hold = asyncio.Event()
    if fault.path == POLL:
        # Keep the prediction running past the create's window, so it is polled.
        prediction_api.next_behaviours.append(Behaviour(hold=hold))
    async with started_scheduler(store, client, reporter) as scheduler:
        first = await submit(scheduler, user=1, prompt="under fire")
        second = await submit(scheduler, user=2, prompt="next in line")
        await prediction_api.wait_for(lambda: not prediction_api.faults)
        hold.set()
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    assert not reporter.failures
    assert [job.id for job, _ in reporter.delivered] == [first.id, second.id]
    assert prediction_api.creates == 2, "a prediction was paid for twice"
    for job_id in (first.id, second.id):
        stored = await store.get(job_id)
        assert stored is not None and stored.status.value == "done"


FATAL = {
    "failed": (Behaviour(outcome="failed"), "The animation failed: CUDA out of memory"),
    "canceled by someone else": (
        Behaviour(outcome="canceled"),
        "The animation service stopped this request.",
    ),
    "aborted": (Behaviour(outcome="aborted"), "The animation service stopped this request."),
}


@pytest.mark.parametrize("name", FATAL)
async def test_a_prediction_that_ends_badly_is_explained_and_the_queue_moves(
    name: str,
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    behaviour, reason = FATAL[name]
    prediction_api.next_behaviours.append(behaviour)
    async with started_scheduler(store, client, reporter) as scheduler:
        failing = await submit(scheduler, user=1)
        await submit(scheduler, user=2, prompt="next in line")
        await reporter.wait_for(lambda: reporter.failures and reporter.delivered)
    job, said = reporter.failures[0]
    assert job.id == failing.id and said.startswith(reason)
    # Whatever GPU time it was billed counts toward the server's usage and budget
    # (an aborted prediction never started, so it has none).
    stored = await store.get(failing.id)
    assert stored is not None and stored.prediction_id is not None
    billed = prediction_api.predictions[stored.prediction_id].metrics.get("predict_time")
    assert stored.predict_time == billed
    assert (billed is None) == (name == "aborted")


@pytest.mark.parametrize("status", [404, 403])
async def test_an_output_url_that_is_refused_is_explained(
    status: int,
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    prediction_api.inject("GET", r"/files/.+", status=status)
    async with started_scheduler(store, client, reporter) as scheduler:
        await submit(scheduler, user=1)
        await submit(scheduler, user=2, prompt="next in line")
        await reporter.wait_for(lambda: reporter.failures and reporter.delivered)
    reason = reporter.failures[0][1]
    assert reason.startswith("The animation could not be downloaded") and str(status) in reason


async def test_a_prediction_stuck_starting_is_canceled_and_explained(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    stuck = asyncio.Event()  # never set: no GPU ever picks it up
    prediction_api.next_behaviours.append(Behaviour(hold_starting=stuck))
    offset = 0.0
    scheduler = make_scheduler(
        store, client, start_timeout=600, wall_clock=lambda: time.time() + offset
    )
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        await submit(scheduler, user=1)
        await prediction_api.wait_for(lambda: prediction_api.polls >= 2)
        assert not reporter.failures  # nine minutes in, it still waits
        offset = 601.0
        await reporter.wait_for(lambda: reporter.failures)
    finally:
        await scheduler.stop()
    assert "did not start this request within 10 minutes" in reporter.failures[0][1]
    assert prediction_api.cancels == 1 and prediction_api.latest.status == "canceled"


async def test_during_an_outage_queued_requests_wait_with_a_note(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    outage = prediction_api.inject(
        "POST", CREATE, status=503, body=HTML_ERROR, content_type="text/html", times=10_000
    )
    async with started_scheduler(store, client, reporter) as scheduler:
        probing = await submit(scheduler, guild=1, user=1)
        await reporter.wait_for(
            lambda: any(u.stage is Stage.UNAVAILABLE for _, u in reporter.statuses)
        )
        # Another server's request, which would start at once if the API were up, waits.
        waiting = await submit(scheduler, guild=2, user=2, prompt="patient")
        # Its first message already says so (the cog shows `queued_status`), so no edit.
        assert scheduler.queued_status(waiting.id) == JobStatusUpdate(Stage.UNAVAILABLE, position=1)
        requests_so_far = prediction_api.create_requests
        await prediction_api.wait_for(lambda: prediction_api.create_requests > requests_so_far)
        assert all(body["input"]["prompt"] != "patient" for body in prediction_api.create_bodies), (
            "a queued request was sent during the outage"
        )
        prediction_api.faults.remove(outage)  # the API is back
        await reporter.wait_for(lambda: len(reporter.delivered) == 2)
    assert [job.id for job, _ in reporter.delivered] == [probing.id, waiting.id]
    assert not reporter.failures and prediction_api.creates == 2


async def test_a_resumed_delivery_waits_out_an_outage(
    store: SQLiteStore,
    client: PredictionClient,
    reporter: RecordingReporter,
    prediction_api: FakePredictionAPI,
) -> None:
    # Left `delivering` by a previous run: the prediction succeeded and is paid for.
    created = await client.create(request().to_api_input())
    await prediction_api.wait_for(lambda: prediction_api.latest.terminal)
    job = await store.add_job(guild_id=1, channel_id=100, requester_id=10, request=request())
    await store.set_request_message(job.id, 5000 + job.id)
    await store.mark_submitted(job.id)
    await store.mark_running(job.id, created.id)
    await store.mark_delivering(job.id, predict_time=1.0)
    prediction_api.inject(
        "GET", POLL, status=503, body=HTML_ERROR, content_type="text/html", times=8
    )
    async with started_scheduler(store, client, reporter):
        await reporter.wait_for(lambda: reporter.delivered or reporter.failures)
    assert not reporter.failures
    assert any(u.stage is Stage.UNAVAILABLE for _, u in reporter.statuses)
    stored = await store.get(job.id)
    assert stored is not None and stored.status.value == "done"
