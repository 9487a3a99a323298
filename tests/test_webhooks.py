"""Webhooks: the receiver takes only signed, fresh, first deliveries; jobs end on a push."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from bot.backends.base import Prediction
from bot.backends.replicate import PredictionClient
from bot.backends.webhooks import ReplayGuard, SigningKey, WebhookReceiver, WebhookVerifier
from bot.core.jobs import JobStatus
from bot.core.limits import SchedulerLimits
from bot.core.reporter import Stage
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.scheduling import RecordingReporter, submit

HOOK_PATH = "/hooks/replicate"


@dataclass
class Clock:
    """Real time, moved by `offset` seconds when a test needs the future."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Receiver:
    """A started receiver and what it handed over."""

    receiver: WebhookReceiver
    url: str
    taken: list[Prediction] = field(default_factory=list)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def receiver(client: PredictionClient, clock: Clock) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 verifying with the fake API's secret, as the bot runs it."""
    taken: list[Prediction] = []
    receiver = WebhookReceiver(
        WebhookVerifier(client.webhook_secret, clock=clock),
        taken.append,
        public_url=f"https://bot.example.com{HOOK_PATH}",
        clock=clock,
    )
    await receiver.start("127.0.0.1", 0)
    try:
        yield Receiver(receiver, f"http://127.0.0.1:{receiver.port}{HOOK_PATH}", taken)
    finally:
        await receiver.stop()


def prediction_body(prediction_id: str = "p1", status: str = "succeeded") -> bytes:
    """A prediction as the API sends it."""
    return json.dumps(
        {
            "id": prediction_id,
            "status": status,
            "input": {"prompt": "x"},
            "output": "https://replicate.delivery/x.mp4",
            "logs": "",
            "metrics": {"predict_time": 3.2},
        }
    ).encode()


def signed_headers(
    sign: Callable[[str, int, bytes], str],
    body: bytes,
    *,
    message_id: str = "msg_1",
    timestamp: int | None = None,
) -> dict[str, str]:
    """The headers of one delivery signed with `sign`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(message_id, timestamp, body),
    }


def sign_with(secret: str) -> Callable[[str, int, bytes], str]:
    """A signer using another secret: what a forger without ours would send."""
    key = SigningKey.from_secret(secret)
    return lambda message_id, timestamp, body: "v1," + key.sign(message_id, str(timestamp), body)


async def post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
    async with http.post(url, data=body, headers=headers) as response:
        return response.status


async def test_a_signed_fresh_delivery_is_taken(
    http: aiohttp.ClientSession, receiver: Receiver, prediction_api: FakePredictionAPI
) -> None:
    body = prediction_body("abc")
    status = await post(http, receiver.url, body, signed_headers(prediction_api.sign_webhook, body))
    assert status == 200
    assert [p.id for p in receiver.taken] == ["abc"]
    assert receiver.taken[0].status == "succeeded"


async def test_a_signature_list_is_accepted_when_any_entry_matches(
    http: aiohttp.ClientSession, receiver: Receiver, prediction_api: FakePredictionAPI
) -> None:
    body = prediction_body("rotating")
    headers = signed_headers(prediction_api.sign_webhook, body)
    # During a secret rotation the sender signs with both keys.
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    assert await post(http, receiver.url, body, headers) == 200
    assert [p.id for p in receiver.taken] == ["rotating"]


@pytest.mark.parametrize("forgery", ["other key", "tampered body", "no signature", "v2 scheme"])
async def test_a_forged_delivery_is_refused(
    http: aiohttp.ClientSession,
    receiver: Receiver,
    prediction_api: FakePredictionAPI,
    forgery: str,
) -> None:
    body = prediction_body("forged")
    headers = signed_headers(prediction_api.sign_webhook, body)
    if forgery == "other key":
        other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        headers = signed_headers(sign_with(other), body)
    elif forgery == "tampered body":
        body = body.replace(b"succeeded", b"failed")
    elif forgery == "no signature":
        del headers["webhook-signature"]
    else:
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    status = await post(http, receiver.url, body, headers)
    assert status == (400 if forgery == "no signature" else 401)
    assert receiver.taken == []
    assert receiver.receiver.rejected == 1


@pytest.mark.parametrize("age", [-301, 301, 3600])
async def test_a_stale_or_future_delivery_is_refused_even_when_signed(
    http: aiohttp.ClientSession, receiver: Receiver, prediction_api: FakePredictionAPI, age: int
) -> None:
    body = prediction_body("old")
    headers = signed_headers(prediction_api.sign_webhook, body, timestamp=int(time.time()) - age)
    assert await post(http, receiver.url, body, headers) == 400
    assert receiver.taken == []


async def test_a_replayed_delivery_is_answered_but_taken_once(
    http: aiohttp.ClientSession, receiver: Receiver, prediction_api: FakePredictionAPI
) -> None:
    body = prediction_body("once")
    headers = signed_headers(prediction_api.sign_webhook, body, message_id="msg_same")
    answers = [await post(http, receiver.url, body, headers) for _ in range(3)]
    assert answers == [200, 200, 200], "a sender retrying must not be told to retry again"
    assert [p.id for p in receiver.taken] == ["once"]
    # Another delivery (another id) of the same prediction is news, and is taken.
    other = signed_headers(prediction_api.sign_webhook, body, message_id="msg_other")
    assert await post(http, receiver.url, body, other) == 200
    assert len(receiver.taken) == 2


async def test_a_signed_body_that_is_not_a_prediction_is_refused(
    http: aiohttp.ClientSession, receiver: Receiver, prediction_api: FakePredictionAPI
) -> None:
    body = b'{"hello": "world"}'
    headers = signed_headers(prediction_api.sign_webhook, body)
    assert await post(http, receiver.url, body, headers) == 400
    assert receiver.taken == []


async def test_a_rotated_secret_is_fetched_again(
    http: aiohttp.ClientSession,
    receiver: Receiver,
    prediction_api: FakePredictionAPI,
    clock: Clock,
) -> None:
    first = prediction_body("before")
    assert await post(
        http, receiver.url, first, signed_headers(prediction_api.sign_webhook, first)
    ) == (200)
    prediction_api.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    body = prediction_body("after")
    # Within a minute of the last fetch a bad signature does not cost an API request.
    headers = signed_headers(prediction_api.sign_webhook, body, message_id="m2")
    assert await post(http, receiver.url, body, headers) == 401
    secret_fetches = prediction_api.requests_by_kind()
    clock.offset = 120
    headers = signed_headers(
        prediction_api.sign_webhook, body, message_id="m3", timestamp=int(clock())
    )
    assert await post(http, receiver.url, body, headers) == 200
    assert [p.id for p in receiver.taken] == ["before", "after"]
    assert prediction_api.requests_by_kind() != secret_fetches


async def test_without_the_secret_deliveries_are_deferred_not_dropped(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, clock: Clock
) -> None:
    client = PredictionClient(
        http,
        base_url=prediction_api.base_url,
        token=prediction_api.token,
        version=prediction_api.version,
        max_attempts=1,
    )
    taken: list[Prediction] = []
    receiver = WebhookReceiver(
        WebhookVerifier(client.webhook_secret, clock=clock),
        taken.append,
        public_url=f"http://127.0.0.1{HOOK_PATH}",
    )
    prediction_api.inject("GET", r"/v1/webhooks/default/secret", status=503, times=2)
    await receiver.start("127.0.0.1", 0)  # the fetch at start fails: the bot still runs
    try:
        url = f"http://127.0.0.1:{receiver.port}{HOOK_PATH}"
        body = prediction_body("later")
        headers = signed_headers(prediction_api.sign_webhook, body)
        assert await post(http, url, body, headers) == 503, "503 asks the sender to retry"
        assert await post(http, url, body, headers) == 200
        assert [p.id for p in taken] == ["later"]
    finally:
        await receiver.stop()


def test_the_replay_guard_forgets_ids_once_their_timestamps_are_stale() -> None:
    guard = ReplayGuard(tolerance=300)
    guard.remember("a", timestamp=1000, now=1000)
    guard.remember("b", timestamp=1200, now=1200)
    assert guard.seen("a") and guard.seen("b")
    guard.remember("c", timestamp=1350, now=1350)  # a's timestamp is now refused anyway
    assert not guard.seen("a") and guard.seen("b") and guard.seen("c")


# The scheduler on webhooks ---------------------------------------------------------------


@dataclass
class PushedWorld:
    """A scheduler whose client asks for webhooks, with a receiver feeding it."""

    scheduler: Scheduler
    receiver: WebhookReceiver
    api: FakePredictionAPI


@pytest.fixture
async def pushed(
    http: aiohttp.ClientSession,
    prediction_api: FakePredictionAPI,
    store: SQLiteStore,
    reporter: RecordingReporter,
    request: pytest.FixtureRequest,
) -> AsyncIterator[PushedWorld]:
    """The real scheduler, client and receiver; `lost` webhooks go to a dead address."""
    marker = request.node.get_closest_marker("lost_webhooks")
    lost = marker is not None
    scale = marker.kwargs.get("scale", 0.01) if marker is not None else 1.0

    async def sleep(seconds: float) -> None:
        """Real sleeps: the safety-net poll must come long after the push (or, lost, scaled)."""
        await asyncio.sleep(seconds * scale)

    client = PredictionClient(
        http,
        base_url=prediction_api.base_url,
        token=prediction_api.token,
        version=prediction_api.version,
        webhook_events=("logs", "completed"),
    )
    scheduler = Scheduler(store, client, limits=SchedulerLimits(status_interval=0), sleep=sleep)
    receiver = WebhookReceiver(
        WebhookVerifier(client.webhook_secret),
        scheduler.push,
        public_url=f"http://127.0.0.1{HOOK_PATH}",
    )
    await receiver.start("127.0.0.1", 0)
    # Nothing listens on port 9 (discard): every delivery there fails.
    port = 9 if lost else receiver.port
    client.webhook_url = f"http://127.0.0.1:{port}{HOOK_PATH}"
    scheduler.attach(reporter)
    await scheduler.start()
    try:
        yield PushedWorld(scheduler, receiver, prediction_api)
    finally:
        await scheduler.stop()
        await receiver.stop()


async def test_a_job_on_webhooks_costs_one_create_and_one_download(
    pushed: PushedWorld, reporter: RecordingReporter, store: SQLiteStore
) -> None:
    api = pushed.api
    api.behaviour_for = lambda _input: Behaviour(queue_time=0.05, step_time=0.06, frame_time=0.002)
    job = await submit(pushed.scheduler, steps=20)
    await reporter.wait_for(lambda: reporter.delivered)
    await pushed.scheduler.wait_idle()
    kinds = api.requests_by_kind()
    assert (api.create_requests, api.polls, api.downloads) == (1, 0, 1), kinds
    create = api.create_bodies[0]
    assert create["webhook"] == f"http://127.0.0.1:{pushed.receiver.port}{HOOK_PATH}"
    assert create["webhook_events_filter"] == ["logs", "completed"]
    creates = [r for r in api.requests if r.method == "POST" and r.path == "/v1/predictions"]
    assert creates[0].header("Prefer") is None, "with a webhook the create is answered at once"
    stored = await store.get(job.id)
    assert stored is not None and stored.status is JobStatus.DONE
    # The pushed log lines moved the progress bar, without a single poll.
    assert any(update.stage is Stage.SAMPLING for _, update in reporter.statuses)


@pytest.mark.lost_webhooks
async def test_lost_webhooks_are_caught_by_the_safety_net_poll(
    pushed: PushedWorld, reporter: RecordingReporter
) -> None:
    api = pushed.api
    await submit(pushed.scheduler)
    await reporter.wait_for(lambda: reporter.delivered)
    await pushed.scheduler.wait_idle()
    assert api.webhook_deliveries and all(
        0 in delivery.answers for delivery in api.webhook_deliveries
    )
    assert api.polls >= 1 and api.downloads == 1 and api.create_requests == 1


@pytest.mark.lost_webhooks(scale=1.0)
async def test_pushes_out_of_order_or_after_the_end_change_nothing(
    pushed: PushedWorld, reporter: RecordingReporter
) -> None:
    api = pushed.api
    hold = asyncio.Event()
    api.behaviour_for = lambda _input: Behaviour(hold=hold)
    await submit(pushed.scheduler)
    halfway = await api.wait_for(
        lambda: api.latest.to_json() if "5/10" in api.latest.logs else None
    )
    pushed.scheduler.push(Prediction.from_json(halfway))
    hold.set()
    done = await api.wait_for(
        lambda: api.latest.to_json() if api.latest.status == "succeeded" else None
    )
    # The end, then a late copy of the middle: the job goes by the end, and asks nothing.
    pushed.scheduler.push(Prediction.from_json(done))
    pushed.scheduler.push(Prediction.from_json(halfway))
    await reporter.wait_for(lambda: reporter.delivered)
    pushed.scheduler.push(Prediction.from_json(halfway))
    pushed.scheduler.push(Prediction.from_json(done))
    await pushed.scheduler.wait_idle()
    assert len(reporter.delivered) == 1 and not reporter.failures
    assert (api.polls, api.downloads) == (0, 1)
    assert any(update.step == 5 for _, update in reporter.statuses), "the middle was shown"
