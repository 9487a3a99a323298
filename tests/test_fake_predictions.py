"""Tests of the fake prediction API itself, driven with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from tests.fakes.local_server import LocalServer
from tests.fakes.predictions import (
    AFTER_CREATE_KINDS,
    DEFAULT_TOKEN,
    DEFAULT_VERSION,
    FOREIGN_HOST,
    Behaviour,
    FakePredictionAPI,
    RandomFaults,
)

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
SAMPLE = b"\x00\x00\x00\x18ftypisom-fake-video-bytes"
BAR_LINE = re.compile(r"^ *\d{1,3}%\|[# ]{10}\| \d+/\d+ \[\d\d:\d\d<(\d\d:\d\d|\?), .+\]$")


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakePredictionAPI]:
    """A running fake with small sample bytes."""
    async with FakePredictionAPI(sample=SAMPLE) as api:
        yield api


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session without default headers."""
    async with aiohttp.ClientSession() as client:
        yield client


def _input(**extra: Any) -> dict[str, Any]:
    """A valid animate-diff input with overrides."""
    return {"prompt": "a cat surfing", "seed": 1234, "steps": 10, **extra}


async def _create(
    session: aiohttp.ClientSession,
    fake: FakePredictionAPI,
    *,
    wait: str | None = None,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST /predictions and return status and JSON."""
    headers = dict(AUTH)
    if wait is not None:
        headers["Prefer"] = wait
    payload = body if body is not None else {"version": DEFAULT_VERSION, "input": _input()}
    async with session.post(f"{fake.base_url}/predictions", json=payload, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def _get(session: aiohttp.ClientSession, fake: FakePredictionAPI, pid: str) -> dict[str, Any]:
    """GET /predictions/{id} and return the JSON."""
    async with session.get(f"{fake.base_url}/predictions/{pid}", headers=AUTH) as r:
        assert r.status == 200
        return await r.json()


@pytest.mark.asyncio
async def test_auth_required(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """Every /v1 route answers 401 without the right bearer token."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": DEFAULT_TOKEN}):
        async with session.get(f"{fake.base_url}/predictions/abc", headers=headers) as r:
            assert r.status == 401
            assert r.content_type in {"application/json", "application/problem+json"}
            body = await r.json(content_type=None)
        assert body["detail"] == "You did not pass a valid authentication token"
        assert body["title"] == "Unauthenticated"
    async with session.post(f"{fake.base_url}/predictions", json={}) as r:
        assert r.status == 401
    assert fake.creates == 0


@pytest.mark.asyncio
async def test_create_with_wait_returns_finished_prediction(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """Prefer: wait holds the create until the prediction succeeds."""
    async with session.post(
        f"{fake.base_url}/predictions",
        json={"version": f"lucataco/animate-diff:{DEFAULT_VERSION}", "input": _input()},
        headers={**AUTH, "Prefer": "wait=10"},
    ) as r:
        assert r.status == 201
        assert r.headers["Content-Type"] == "application/json"
        body = await r.json()
    assert re.fullmatch(r"[a-z0-9]{26}", body["id"])
    assert body["status"] == "succeeded"
    assert body["model"] == "lucataco/animate-diff"
    assert body["version"] == DEFAULT_VERSION
    assert body["source"] == "api"
    assert body["data_removed"] is False
    assert body["error"] is None
    assert body["output"] == f"{fake.origin}/files/{body['id']}.mp4"
    assert body["metrics"]["predict_time"] > 0
    assert body["metrics"]["total_time"] >= body["metrics"]["predict_time"]
    for key in ("created_at", "started_at", "completed_at"):
        assert body[key].endswith("Z")
    logs: str = body["logs"]
    assert logs.startswith("Using seed: 1234\n")
    assert logs.endswith("\n")
    lines = logs.splitlines()[1:]
    assert all(BAR_LINE.match(line) for line in lines), lines
    assert any(" 10/10 [" in line for line in lines)
    assert lines[-1].startswith(" 100%|##########| 16/16 [")
    assert any(line.startswith("  40%|####      | 4/10 [") for line in lines)
    assert fake.creates == 1


@pytest.mark.asyncio
async def test_create_without_wait_then_poll(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """A plain create answers `starting`; polling later shows the result."""
    status, body = await _create(session, fake)
    assert status == 201
    assert body["status"] == "starting"
    assert body["output"] is None
    assert body["started_at"] is None
    pid = body["id"]
    await fake.wait_for(lambda: fake.predictions[pid].terminal)
    polled = await _get(session, fake, pid)
    assert polled["status"] == "succeeded"
    assert polled["output"].endswith(f"/files/{pid}.mp4")
    assert fake.polls == 1
    async with session.get(f"{fake.base_url}/predictions/nope", headers=AUTH) as r:
        assert r.status == 404
        assert (await r.json())["detail"] == "Not found."


@pytest.mark.asyncio
async def test_prefer_wait_times_out_while_starting(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """When the wait window passes first, the create answers with the current state."""
    gate = asyncio.Event()
    fake.next_behaviours.append(Behaviour(hold_starting=gate))
    status, body = await _create(session, fake, wait="wait=1")
    assert status in {201, 202}
    assert body["status"] == "starting"
    gate.set()
    await fake.wait_for(lambda: fake.latest.status == "succeeded")


@pytest.mark.asyncio
async def test_download_needs_no_auth(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """Output files are served without a token, and sending one is recorded."""
    _, body = await _create(session, fake, wait="wait")
    async with session.get(body["output"]) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "video/mp4"
        assert await r.read() == SAMPLE
    assert (fake.downloads, fake.unauthorized_downloads) == (1, 0)
    async with session.get(body["output"], headers=AUTH) as r:
        assert r.status == 200
    assert (fake.downloads, fake.unauthorized_downloads) == (2, 1)


@pytest.mark.asyncio
async def test_output_kinds(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """Data URIs and one-element lists are produced on request."""
    fake.next_behaviours += [Behaviour(output_kind="data"), Behaviour(output_kind="list")]
    _, data = await _create(session, fake, wait="wait=10")
    assert data["output"] == "data:video/mp4;base64," + base64.b64encode(SAMPLE).decode()
    _, listed = await _create(session, fake, wait="wait=10")
    assert listed["output"] == [f"{fake.origin}/files/{listed['id']}.mp4"]


@pytest.mark.asyncio
async def test_failed_outcome(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """A failing behaviour ends `failed` with its error and partial logs."""
    fake.behaviour_for = lambda data: Behaviour(outcome="failed", error=f"boom {data['prompt']}")
    _, body = await _create(session, fake, wait="wait=10")
    assert body["status"] == "failed"
    assert body["error"] == "boom a cat surfing"
    assert body["output"] is None
    assert "Using seed: 1234" in body["logs"]
    assert "predict_time" in body["metrics"]


@pytest.mark.asyncio
async def test_aborted_never_processes(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """An aborted prediction never starts."""
    fake.next_behaviours.append(Behaviour(outcome="aborted"))
    _, body = await _create(session, fake, wait="wait=10")
    assert body["status"] == "aborted"
    assert body["started_at"] is None
    assert body["logs"] == ""


@pytest.mark.asyncio
async def test_hold_keeps_processing_until_set(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """The hold event pauses a prediction halfway through sampling."""
    gate = asyncio.Event()
    fake.next_behaviours.append(Behaviour(hold=gate))
    _, body = await _create(session, fake)
    pid = body["id"]
    await fake.wait_for(lambda: "5/10" in fake.predictions[pid].logs)
    await asyncio.sleep(0.1)
    polled = await _get(session, fake, pid)
    assert polled["status"] == "processing"
    assert "6/10" not in polled["logs"]
    gate.set()
    await fake.wait_for(lambda: fake.predictions[pid].status == "succeeded")


@pytest.mark.asyncio
async def test_cancel(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """Cancel stops a running prediction and is a no-op once terminal."""
    gate = asyncio.Event()
    fake.next_behaviours.append(Behaviour(hold=gate))
    _, body = await _create(session, fake)
    pid = body["id"]
    await fake.wait_for(lambda: fake.predictions[pid].status == "processing")
    url = f"{fake.base_url}/predictions/{pid}/cancel"
    async with session.post(url, headers=AUTH) as r:
        assert r.status == 200
        canceled = await r.json()
    assert canceled["status"] == "canceled"
    assert canceled["completed_at"] is not None
    assert "Using seed: 1234" in canceled["logs"]
    gate.set()
    await asyncio.sleep(0.05)
    async with session.post(url, headers=AUTH) as r:
        assert await r.json() == canceled
    assert fake.cancels == 2


@pytest.mark.asyncio
async def test_list_pagination(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """Listing is newest first, 100 a page, with an absolute `next` cursor URL."""
    fake.behaviour_for = lambda _data: Behaviour(outcome="aborted", queue_time=0)
    ids = [(await _create(session, fake))[1]["id"] for _ in range(101)]
    async with session.get(f"{fake.base_url}/predictions", headers=AUTH) as r:
        page = await r.json()
    assert [p["id"] for p in page["results"]] == ids[::-1][:100]
    assert page["previous"] is None
    assert page["next"].startswith(f"{fake.base_url}/predictions?cursor=")
    async with session.get(page["next"], headers=AUTH) as r:
        second = await r.json()
    assert [p["id"] for p in second["results"]] == [ids[0]]
    assert second["next"] is None


@pytest.mark.asyncio
async def test_expire(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """Expiry removes output, logs and the file itself."""
    _, body = await _create(session, fake, wait="wait=10")
    fake.expire(body["id"])
    expired = await _get(session, fake, body["id"])
    assert (expired["output"], expired["logs"], expired["data_removed"]) == (None, "", True)
    async with session.get(body["output"]) as r:
        assert r.status == 404


@pytest.mark.asyncio
async def test_injected_429_creates_nothing(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """A throttled create answers 429 with Retry-After and starts no prediction."""
    fake.inject(
        "POST",
        r"/v1/predictions",
        status=429,
        headers={"Retry-After": "1"},
        body={"detail": "Request was throttled. Expected available in 1 second.", "status": 429},
    )
    async with session.post(
        f"{fake.base_url}/predictions",
        json={"version": DEFAULT_VERSION, "input": _input()},
        headers=AUTH,
    ) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "1"
        assert "throttled" in (await r.json())["detail"]
    assert fake.creates == 0
    status, _ = await _create(session, fake)
    assert status == 201
    assert (fake.creates, fake.create_requests) == (1, 2)


@pytest.mark.asyncio
async def test_injected_html_502_and_drop(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """HTML error pages and dropped connections are scriptable per path."""
    _, body = await _create(session, fake)
    poll = rf"/v1/predictions/{body['id']}"
    fake.inject("GET", poll, status=502, body="<html>Bad Gateway</html>", content_type="text/html")
    # aiohttp silently retries an idempotent request once on a dropped keep-alive connection.
    fake.inject("GET", poll, drop=True, times=2)
    url = f"{fake.base_url}/predictions/{body['id']}"
    async with session.get(url, headers=AUTH) as r:
        assert r.status == 502
        assert r.content_type == "text/html"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(url, headers=AUTH) as r:
            await r.read()
    assert (await _get(session, fake, body["id"]))["id"] == body["id"]
    assert fake.polls == 4


@pytest.mark.asyncio
async def test_after_create_fault(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """An after_create fault creates the prediction but hides it behind the error."""
    fake.inject("POST", r"/v1/predictions", status=504, after_create=True, delay=0.05)
    status, body = await _create(session, fake)
    assert status == 504
    assert "detail" in body
    assert fake.creates == 1
    await fake.wait_for(lambda: fake.latest.status == "succeeded")
    fake.inject("POST", r"/v1/predictions", drop=True, after_create=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _create(session, fake)
    assert fake.creates == 2


@pytest.mark.asyncio
async def test_validation_errors(fake: FakePredictionAPI, session: aiohttp.ClientSession) -> None:
    """Bad versions and inputs answer 422 naming the problem."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"version": "0" * 64, "input": _input()}, "Invalid version or not permitted"),
        ({"version": DEFAULT_VERSION, "input": _input(steps=0)}, "steps"),
        ({"version": DEFAULT_VERSION, "input": _input(steps=2.5)}, "steps"),
        ({"version": DEFAULT_VERSION, "input": _input(guidance_scale=11)}, "guidance_scale"),
        ({"version": DEFAULT_VERSION, "input": _input(path="sd15.ckpt")}, "path"),
        ({"version": DEFAULT_VERSION, "input": _input(motion_module="v3")}, "motion_module"),
        ({"version": DEFAULT_VERSION, "input": _input(seed="7")}, "seed"),
        ({"version": DEFAULT_VERSION, "input": _input(negative_prompt="x")}, "negative_prompt"),
        ({"version": DEFAULT_VERSION, "input": {"steps": 5}}, "prompt"),
    ]
    for payload, needle in cases:
        status, body = await _create(session, fake, body=payload)
        assert status == 422, payload
        assert needle in body["detail"], body
    assert fake.creates == 0


@pytest.mark.asyncio
async def test_urls_point_elsewhere(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """urls.get and urls.cancel name a foreign host, so following them fails."""
    _, body = await _create(session, fake)
    for key in ("get", "cancel"):
        url = URL(body["urls"][key])
        assert url.host == FOREIGN_HOST
        assert body["id"] in url.path
    assert body["urls"]["web"].endswith(body["id"])


@pytest.mark.asyncio
async def test_wait_for_times_out(fake: FakePredictionAPI) -> None:
    """wait_for raises AssertionError when nothing satisfies the predicate."""
    with pytest.raises(AssertionError):
        await fake.wait_for(lambda: fake.creates > 0, timeout=0.05)
    with pytest.raises(AssertionError):
        await fake.wait_for(lambda: fake.latest, timeout=0.05)


# ---- seeded random faults -------------------------------------------------------------


async def _answer(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> str:
    """Send one request and describe how it was answered: a status, or the error's name."""
    try:
        async with session.request(method, url, headers=AUTH, **kwargs) as r:
            body = await r.read()
            try:
                json_ok = isinstance(json.loads(body), dict)
            except ValueError:
                json_ok = False
            return f"{r.status}{'' if json_ok else ' not-json'}"
    except aiohttp.ClientError as exc:
        return type(exc).__name__


@pytest.mark.asyncio
async def test_random_faults_are_off_by_default_and_at_rate_zero(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """Without set_fault_rate, or at rate 0, every request is served."""
    assert fake.random_faults is None
    assert fake.set_fault_rate(0.0, random.Random(1)) is None
    status, body = await _create(session, fake)
    assert status == 201
    assert (await _get(session, fake, body["id"]))["id"] == body["id"]


@pytest.mark.asyncio
async def test_random_faults_before_handling_execute_nothing(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """At rate 1 with no after-create share, every request fails and no create takes effect."""
    faults = fake.set_fault_rate(1.0, random.Random(3), stall=0.05, after_create_share=0.0)
    assert faults is not None
    payload = {"version": DEFAULT_VERSION, "input": _input()}
    answers = [
        await _answer(session, "POST", f"{fake.base_url}/predictions", json=payload)
        for _ in range(30)
    ]
    assert all(not a.startswith("2") or a.endswith("not-json") for a in answers), answers
    assert fake.creates == 0
    assert {kind for kind, _ in faults.counts} == {"create"}
    assert faults.total == fake.create_requests == 30
    assert len({name for _, name in faults.counts}) >= 5  # a real mix, not one kind
    assert fake.requests_by_kind()["create"] == 30


@pytest.mark.asyncio
async def test_random_faults_after_create_hide_a_prediction_that_exists(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """An after-create fault answers badly although the prediction was made."""
    faults = fake.set_fault_rate(1.0, random.Random(5), after_create_share=1.0)
    assert faults is not None
    for seed in range(1, 11):
        payload = {"version": DEFAULT_VERSION, "input": _input(seed=seed)}
        answer = await _answer(session, "POST", f"{fake.base_url}/predictions", json=payload)
        assert answer in ("ServerDisconnectedError", "502 not-json", "201 not-json"), answer
    assert fake.creates == 10
    assert {name for _, name in faults.counts} <= set(AFTER_CREATE_KINDS)
    fake.set_fault_rate(0.0, random.Random(5))
    pid = fake.latest.id
    assert (await _get(session, fake, pid))["id"] == pid


@pytest.mark.asyncio
async def test_random_faults_hit_polls_and_downloads_but_never_bad_json_files(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    """Polls and file downloads fail at the rate too; a file is never answered as bad JSON."""
    _, body = await _create(session, fake, wait="wait=5")
    faults = fake.set_fault_rate(1.0, random.Random(9), stall=0.05, retry_after_max=0.5)
    assert faults is not None
    for _ in range(10):
        assert not (await _answer(session, "GET", body["output"])).startswith("200")
        await _answer(session, "GET", f"{fake.base_url}/predictions/{body['id']}")
    assert ("download", "bad-json") not in faults.counts
    assert {kind for kind, _ in faults.counts} == {"download", "poll"}
    for (_, name), _count in faults.counts.items():
        assert name in ("429", "429-retry-after", "500", "502", "503", "drop", "stall", "bad-json")


def test_random_faults_follow_the_seed() -> None:
    """The same seed draws the same faults for the same requests."""
    requests = [("POST", "/v1/predictions"), ("GET", "/v1/predictions/x"), ("GET", "/files/x.mp4")]

    def draws(seed: int) -> list[tuple[int, bool, bool, str | None]]:
        faults = RandomFaults(rate=0.4, rng=random.Random(seed))
        out: list[tuple[int, bool, bool, str | None]] = []
        for n in range(200):
            fault = faults.draw(*requests[n % 3])
            if fault is not None:
                retry = (fault.headers or {}).get("Retry-After")
                out.append((fault.status, fault.drop, fault.after_create, retry))
        return out

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert 40 < len(draws(1)) < 120


# ---- webhooks ------------------------------------------------------------------------------


class _Receiver(LocalServer):
    """A webhook endpoint on 127.0.0.1 that records what it is sent."""

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def start(self) -> None:
        """Listen on a free port."""
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        await self.start_app(app)
        self.url = f"{self.origin}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        """Record one delivery."""
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status)


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check a Standard Webhooks signature independently of the fake's own signer."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        part.removeprefix("v1,") == expected for part in headers["webhook-signature"].split()
    )


async def test_webhook_secret_needs_the_token(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/webhooks/default/secret"
    async with session.get(url) as refused:
        assert refused.status == 401
    async with session.get(url, headers=AUTH) as answer:
        assert (await answer.json())["key"].startswith("whsec_")


async def test_a_completed_webhook_is_signed_and_carries_the_prediction(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    receiver = _Receiver()
    await receiver.start()
    try:
        status, created = await _create(
            session,
            fake,
            body={
                "version": DEFAULT_VERSION,
                "input": _input(),
                "webhook": receiver.url,
                "webhook_events_filter": ["completed"],
            },
        )
        assert status == 201
        await fake.wait_for(lambda: fake.webhook_deliveries and fake.webhook_deliveries[-1].answers)
    finally:
        await receiver.close()
    assert [d.event for d in fake.webhook_deliveries] == ["completed"]
    headers, body = receiver.received[0]
    delivered = json.loads(body)
    assert delivered["id"] == created["id"] and delivered["status"] == "succeeded"
    assert _verify(fake.webhook_secret, headers, body)
    assert not _verify(fake.webhook_secret, headers, body + b" ")


async def test_an_unanswered_webhook_is_retried(
    fake: FakePredictionAPI, session: aiohttp.ClientSession
) -> None:
    receiver = _Receiver(status=500)
    await receiver.start()
    try:
        await _create(
            session,
            fake,
            body={"version": DEFAULT_VERSION, "input": _input(), "webhook": receiver.url},
        )
        await fake.wait_for(
            lambda: any(len(d.answers) == 3 for d in fake.webhook_deliveries), timeout=15
        )
    finally:
        await receiver.close()
    completed = [d for d in fake.webhook_deliveries if d.event == "completed"]
    assert completed and completed[0].answers == [500, 500, 500]
