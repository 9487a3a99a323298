"""The prediction client against the fake API: waits, polls, retries, typed errors."""

from __future__ import annotations

import asyncio
import base64
import socket

import aiohttp
import pytest

from bot.backends.base import (
    CreateOutcomeUnknown,
    DownloadError,
    Prediction,
    PredictionAPIError,
    PredictionNotFound,
    RateLimited,
    SearchIncomplete,
    ServiceUnavailable,
)
from bot.backends.replicate import PredictionClient
from bot.core.jobs import GenerationRequest
from tests.fakes.predictions import Behaviour, FakePredictionAPI

INPUT = GenerationRequest.create("a paper boat on a river", seed=1234, steps=10).to_api_input()


def _client(
    http: aiohttp.ClientSession, api: FakePredictionAPI, sleeps: list[float], **kwargs: object
) -> PredictionClient:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return PredictionClient(
        http,
        base_url=api.base_url,
        token=api.token,
        version=api.version,
        sleep=sleep,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_create_with_wait_returns_the_finished_prediction(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    prediction = await client.create(INPUT)
    assert prediction.status == "succeeded" and prediction.is_terminal
    assert prediction.input["seed"] == 1234
    assert "Using seed: 1234" in prediction.logs
    assert prediction.output_urls[0].startswith(prediction_api.origin)
    assert prediction.predict_time is not None
    create = prediction_api.requests[0]
    assert create.header("Prefer") == "wait=60"
    assert create.header("Authorization") == f"Bearer {prediction_api.token}"
    assert create.json == {"version": prediction_api.version, "input": INPUT}
    assert prediction_api.polls == 0


async def test_polls_use_the_configured_base_not_urls_get(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    started = await client.create(INPUT, wait=False)
    assert started.status == "starting"
    done = await prediction_api.wait_for(lambda: prediction_api.predictions[started.id].terminal)
    assert done
    prediction = await client.get(started.id)
    assert prediction.status == "succeeded"
    assert prediction_api.requests[-1].path == f"/v1/predictions/{started.id}"


async def test_owner_name_version_is_sent_as_given(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = PredictionClient(
        http,
        base_url=prediction_api.base_url + "/",
        token=prediction_api.token,
        version=f"lucataco/animate-diff:{prediction_api.version}",
    )
    prediction = await client.create(INPUT)
    assert prediction.status == "succeeded"
    assert prediction_api.create_bodies[0]["version"].startswith("lucataco/animate-diff:")


async def test_get_retries_server_errors_with_html_bodies(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    sleeps: list[float] = []
    client = _client(http, prediction_api, sleeps)
    created = await client.create(INPUT)
    prediction_api.inject(
        "GET",
        r"/v1/predictions/\w+",
        status=502,
        body="<html><body>Bad gateway</body></html>",
        content_type="text/html",
        times=2,
    )
    prediction = await client.get(created.id)
    assert prediction.status == "succeeded"
    assert len(sleeps) == 2 and all(delay > 0 for delay in sleeps)
    assert sleeps[1] > sleeps[0] / 2  # grows (with jitter)


async def test_get_gives_up_with_service_unavailable(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = _client(http, prediction_api, [], max_attempts=3)
    prediction_api.inject("GET", r"/v1/predictions/abc", status=503, times=5)
    with pytest.raises(ServiceUnavailable):
        await client.get("abc")
    assert prediction_api.polls == 3


async def test_get_retries_malformed_json_and_dropped_connections(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = _client(http, prediction_api, [])
    created = await client.create(INPUT)
    prediction_api.inject("GET", r"/v1/predictions/\w+", status=200, body="{not json")
    # aiohttp itself retries one dropped keep-alive GET, so drop twice to reach our code.
    prediction_api.inject("GET", r"/v1/predictions/\w+", drop=True, times=2)
    assert (await client.get(created.id)).status == "succeeded"


async def test_throttling_honours_retry_after(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    sleeps: list[float] = []
    client = _client(http, prediction_api, sleeps)
    prediction_api.inject(
        "POST",
        r"/v1/predictions",
        status=429,
        headers={"Retry-After": "7"},
        body={"detail": "Request was throttled. Expected available in 7 seconds.", "status": 429},
    )
    prediction_api.inject("POST", r"/v1/predictions", status=429)  # no Retry-After: backoff
    prediction = await client.create(INPUT)
    assert prediction.status == "succeeded"
    assert sleeps[0] == 7.0 and 0 < sleeps[1] <= 1.0
    assert prediction_api.creates == 1


async def test_a_long_retry_after_is_left_to_the_caller(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    sleeps: list[float] = []
    client = _client(http, prediction_api, sleeps)
    prediction_api.inject("POST", r"/v1/predictions", status=429, headers={"Retry-After": "90"})
    with pytest.raises(RateLimited) as caught:
        await client.create(INPUT)
    assert caught.value.retry_after == 90.0 and sleeps == []
    assert prediction_api.create_requests == 1


async def test_throttled_every_time_raises_rate_limited(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = _client(http, prediction_api, [], max_attempts=2)
    prediction_api.inject("GET", r"/v1/predictions/x", status=429, times=5)
    with pytest.raises(RateLimited, match=r"throttled|429|Too Many"):
        await client.get("x")


async def test_create_is_not_retried_after_a_server_error(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = _client(http, prediction_api, [])
    prediction_api.inject("POST", r"/v1/predictions", status=502, after_create=True)
    with pytest.raises(CreateOutcomeUnknown):
        await client.create(INPUT)
    assert prediction_api.create_requests == 1
    assert prediction_api.creates == 1  # it was created: retrying would have paid twice


async def test_create_is_not_retried_after_a_dropped_connection(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = _client(http, prediction_api, [])
    prediction_api.inject("POST", r"/v1/predictions", drop=True, after_create=True)
    with pytest.raises(CreateOutcomeUnknown):
        await client.create(INPUT)
    assert prediction_api.create_requests == 1


async def test_create_is_not_retried_after_a_time_out(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = _client(http, prediction_api, [], request_timeout=0.2)
    prediction_api.inject("POST", r"/v1/predictions", status=201, delay=5, after_create=True)
    with pytest.raises(CreateOutcomeUnknown):
        await client.create(INPUT, wait=False)
    assert prediction_api.create_requests == 1


async def test_create_is_retried_when_the_connection_is_refused(
    http: aiohttp.ClientSession,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = PredictionClient(
        http,
        base_url=f"http://127.0.0.1:{port}/v1",
        token="t",
        version="v",
        sleep=sleep,
        max_attempts=3,
    )
    with pytest.raises(ServiceUnavailable) as caught:
        await client.create(INPUT)
    assert not isinstance(caught.value, CreateOutcomeUnknown)
    assert len(sleeps) == 2


async def test_errors_carry_the_api_detail(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    with pytest.raises(PredictionAPIError) as caught:
        await client.create({**INPUT, "steps": 500})
    assert caught.value.status == 422 and "steps" in caught.value.detail
    with pytest.raises(PredictionNotFound) as missing:
        await client.get("doesnotexist")
    assert missing.value.detail == "Not found."


async def test_a_refused_token_is_a_plain_api_error(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = PredictionClient(
        http, base_url=prediction_api.base_url, token="wrong", version=prediction_api.version
    )
    with pytest.raises(PredictionAPIError) as caught:
        await client.get("x")
    assert caught.value.status == 401
    assert "wrong" not in str(caught.value)


async def test_cancel_stops_a_running_prediction(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    hold = asyncio.Event()
    prediction_api.next_behaviours.append(Behaviour(hold=hold))
    created = await client.create(INPUT, wait=False)
    await prediction_api.wait_for(
        lambda: prediction_api.predictions[created.id].status == "processing"
    )
    canceled = await client.cancel(created.id)
    assert canceled.status == "canceled"
    assert prediction_api.requests[-1].path == f"/v1/predictions/{created.id}/cancel"


async def test_find_locates_a_prediction_by_version_and_input(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    other = GenerationRequest.create("something else", seed=99).to_api_input()
    await client.create(other, wait=False)
    wanted = await client.create(INPUT, wait=False)
    for _ in range(3):
        await client.create(other, wait=False)
    found = await client.find(INPUT, created_after=0)
    assert found is not None and found.id == wanted.id

    async def refuse(_prediction: Prediction) -> bool:
        return False

    assert await client.find(INPUT, created_after=0, accept=refuse) is None
    assert await client.find({**INPUT, "seed": 5}, created_after=0) is None


async def test_find_follows_pages_on_the_configured_host(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.page_size = 2
    wanted = await client.create(INPUT, wait=False)
    for seed in range(5):
        await client.create({**INPUT, "seed": 100 + seed}, wait=False)
    found = await client.find(INPUT, created_after=0)
    assert found is not None and found.id == wanted.id
    list_calls = [r for r in prediction_api.requests if r.method == "GET"]
    assert len(list_calls) >= 3


async def test_find_refuses_to_guess_when_the_list_is_too_long(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.page_size = 1
    for seed in range(4):
        await client.create({**INPUT, "seed": 100 + seed}, wait=False)
    with pytest.raises(SearchIncomplete):
        await client.find(INPUT, created_after=0, max_pages=3)


async def test_download_fetches_output_without_credentials(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    prediction = await client.create(INPUT)
    data = await client.download(prediction.output_urls[0], max_bytes=10 * 2**20)
    assert data == prediction_api.sample
    assert prediction_api.downloads == 1 and prediction_api.unauthorized_downloads == 0


async def test_download_refuses_files_over_the_cap(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    prediction = await client.create(INPUT)
    with pytest.raises(DownloadError, match="larger"):
        await client.download(prediction.output_urls[0], max_bytes=1000)


async def test_download_of_a_missing_file_fails_clearly(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    with pytest.raises(DownloadError, match="404"):
        await client.download(f"{prediction_api.origin}/files/nothing.mp4", max_bytes=1000)


async def test_data_uri_and_list_outputs(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.next_behaviours += [Behaviour(output_kind="data"), Behaviour(output_kind="list")]
    as_data = await client.create(INPUT)
    assert as_data.output_urls[0].startswith("data:video/mp4;base64,")
    assert await client.download(as_data.output_urls[0], max_bytes=10 * 2**20) == (
        prediction_api.sample
    )
    as_list = await client.create(INPUT)
    assert isinstance(as_list.output, list) and len(as_list.output_urls) == 1
    assert prediction_api.downloads == 0
    small = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    assert await client.download(small, max_bytes=10) == b"hello"
    with pytest.raises(DownloadError):
        await client.download("data:video/mp4;base64,@@@", max_bytes=10)
    with pytest.raises(DownloadError):
        await client.download("file:///etc/passwd", max_bytes=10)


async def test_failed_prediction_carries_its_error(
    client: PredictionClient, prediction_api: FakePredictionAPI
) -> None:
    prediction_api.next_behaviours.append(Behaviour(outcome="failed"))
    prediction = await client.create(INPUT)
    assert prediction.status == "failed"
    assert prediction.error is not None and "CUDA out of memory" in prediction.error
