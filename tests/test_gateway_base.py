"""A gateway serving the API under a path (`https://host/replicate/v1`): every call keeps it.

The fake serves the API under /replicate/v1; its `urls.get`/`urls.cancel` and the list's `next`
links name another local server, which records anything it gets: nothing may reach it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yarl

from bot.backends.replicate import PredictionClient
from bot.core.jobs import GenerationRequest
from tests.fakes.predictions import Behaviour, FakePredictionAPI, OtherHost

PREFIX = "/replicate/v1"
INPUT = GenerationRequest.create("a kite over the dunes", seed=4321, steps=6).to_api_input()


@pytest.fixture
async def elsewhere() -> AsyncIterator[OtherHost]:
    """The other host the API's links point at."""
    async with OtherHost() as host:
        yield host


@pytest.fixture
async def gateway(elsewhere: OtherHost) -> AsyncIterator[FakePredictionAPI]:
    """The fake API under a path prefix, its links pointing at the other host."""
    async with FakePredictionAPI(path_prefix=PREFIX) as api:
        api.urls_base = f"{elsewhere.origin}{PREFIX}"
        api.next_base = f"{elsewhere.origin}{PREFIX}"
        yield api


async def _no_sleep(_seconds: float) -> None:
    """Backoff that does not wait."""


@pytest.fixture
def client(http: aiohttp.ClientSession, gateway: FakePredictionAPI) -> PredictionClient:
    """The real client, configured with the gateway's base (a trailing slash too)."""
    assert gateway.base_url.endswith(PREFIX)
    return PredictionClient(
        http,
        base_url=gateway.base_url + "/",
        token=gateway.token,
        version=gateway.version,
        sleep=_no_sleep,
    )


def _paths(api: FakePredictionAPI) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in api.requests]


async def test_create_get_and_cancel_keep_the_path(
    client: PredictionClient, gateway: FakePredictionAPI, elsewhere: OtherHost
) -> None:
    assert client.base_url == gateway.base_url
    held = await client.create(INPUT)  # held with Prefer: wait until it ends
    assert held.status == "succeeded"
    hold = asyncio.Event()
    gateway.next_behaviours.append(Behaviour(hold=hold))
    started = await client.create(INPUT, wait=False)
    answer = gateway.predictions[started.id].to_json()
    assert answer["urls"]["get"] == f"{elsewhere.origin}{PREFIX}/predictions/{started.id}"
    assert answer["urls"]["cancel"].startswith(elsewhere.origin)
    await gateway.wait_for(lambda: gateway.predictions[started.id].status == "processing")
    assert (await client.get(started.id)).status == "processing"
    assert (await client.cancel(started.id)).status == "canceled"
    assert _paths(gateway) == [
        ("POST", f"{PREFIX}/predictions"),
        ("POST", f"{PREFIX}/predictions"),
        ("GET", f"{PREFIX}/predictions/{started.id}"),
        ("POST", f"{PREFIX}/predictions/{started.id}/cancel"),
    ]
    assert all(r.header("Authorization") == f"Bearer {gateway.token}" for r in gateway.requests)
    assert elsewhere.seen == []  # urls.get and urls.cancel were never followed


async def test_the_webhook_secret_keeps_the_path(
    client: PredictionClient, gateway: FakePredictionAPI, elsewhere: OtherHost
) -> None:
    assert await client.webhook_secret() == gateway.webhook_secret
    assert _paths(gateway) == [("GET", f"{PREFIX}/webhooks/default/secret")]
    assert elsewhere.seen == []


async def test_find_follows_next_on_the_configured_base_taking_only_its_cursor(
    client: PredictionClient, gateway: FakePredictionAPI, elsewhere: OtherHost
) -> None:
    gateway.page_size = 2
    wanted = await client.create(INPUT, wait=False)
    for seed in range(4):
        await client.create({**INPUT, "seed": 100 + seed}, wait=False)
    found = await client.find(INPUT, created_after=0)
    assert found is not None and found.id == wanted.id
    lists = [r for r in gateway.requests if r.method == "GET"]
    assert [r.path for r in lists] == [f"{PREFIX}/predictions"] * 3
    assert "created_after" in lists[0].query and "cursor" not in lists[0].query
    assert all(set(r.query) == {"cursor"} for r in lists[1:])
    assert lists[1].query["cursor"] != lists[2].query["cursor"]
    # The `next` links named the other host; only their cursors were taken.
    assert elsewhere.seen == []


async def test_next_on_another_host_gives_only_its_cursor(
    client: PredictionClient, gateway: FakePredictionAPI, elsewhere: OtherHost
) -> None:
    gateway.page_size = 1
    await client.create({**INPUT, "seed": 1}, wait=False)
    await client.create({**INPUT, "seed": 2}, wait=False)
    async with aiohttp.ClientSession() as raw:
        headers = {"Authorization": f"Bearer {gateway.token}"}
        async with raw.get(f"{gateway.base_url}/predictions", headers=headers) as answer:
            page = await answer.json()
    next_url = yarl.URL(page["next"])
    assert next_url.origin() == yarl.URL(elsewhere.origin).origin()
    assert await client.find(INPUT, created_after=0) is None
    second = [r for r in gateway.requests if r.method == "GET"][2]
    assert second.path == f"{PREFIX}/predictions"
    assert second.query == {"cursor": next_url.query["cursor"]}
    assert elsewhere.seen == []


async def test_outputs_on_the_gateway_origin_download_without_the_token(
    client: PredictionClient, gateway: FakePredictionAPI
) -> None:
    prediction = await client.create(INPUT)
    url = prediction.output_urls[0]
    assert url.startswith(f"{gateway.origin}/files/")  # beside the API, not under its prefix
    assert await client.download(url, max_bytes=10 * 2**20) == gateway.sample
    assert gateway.downloads == 1 and gateway.unauthorized_downloads == 0
