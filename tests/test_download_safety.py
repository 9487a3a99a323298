"""Where the client sends the token and what it downloads: hosts, redirects, size and time."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from bot.backends.base import DownloadError, PredictionAPIError
from bot.backends.output_hosts import (
    DEFAULT_OUTPUT_PREFIXES,
    PublicAddressResolver,
    is_public_address,
)
from bot.backends.replicate import PredictionClient
from tests.fakes.dns import StaticResolver
from tests.fakes.local_server import LocalServer
from tests.fakes.predictions import FakePredictionAPI

INPUT = {"prompt": "a cat", "seed": 1, "steps": 4}
PAYLOAD = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


class FileHost(LocalServer):
    """A small file server on 127.0.0.1 that records what reached it and can misbehave."""

    shutdown_timeout = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, str]] = []
        self.release = asyncio.Event()  # set at teardown: lets stalled answers finish

    async def start(self) -> None:
        """Serve the routes below on a free port."""
        app = web.Application()
        app.router.add_get("/files/plain.mp4", self._plain)
        app.router.add_get("/files/chunked.mp4", self._chunked)
        app.router.add_get("/files/stall.mp4", self._stall)
        app.router.add_get("/files/trickle.mp4", self._trickle)
        app.router.add_get("/files/redirect.mp4", self._redirect)
        app.router.add_get("/v1/predictions/{id}", self._redirect)
        await self.start_app(app)

    async def close(self) -> None:
        """Release held answers and stop."""
        self.release.set()
        await super().close()

    def _record(self, request: web.Request) -> None:
        self.seen.append({"path": request.path, **dict(request.headers)})

    async def _plain(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(body=PAYLOAD, content_type="video/mp4")

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        """Send the payload in pieces with no Content-Length, so only counting finds its size."""
        self._record(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(PAYLOAD), 1024):
            await response.write(PAYLOAD[start : start + 1024])
        await response.write_eof()
        return response

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        """Send the first bytes, then nothing until released."""
        self._record(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(PAYLOAD[:100])
        await self.release.wait()
        return response

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        """Keep sending a byte now and then (never stalling) until released."""
        self._record(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        while not self.release.is_set():
            await response.write(b"x")
            await asyncio.sleep(0.02)
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(status=302, headers={"Location": f"{self.origin}/files/plain.mp4"})


@pytest.fixture
async def host() -> AsyncIterator[FileHost]:
    """A second server, on another port of 127.0.0.1."""
    async with FileHost() as server:
        yield server


async def _no_sleep(_seconds: float) -> None:
    """Backoff that does not wait."""


def make_client(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    resolver: Callable[[], AbstractResolver] = lambda: StaticResolver("93.184.216.34"),
    **timeouts: float,
) -> PredictionClient:
    """A prediction client on a base URL with small time limits."""
    return PredictionClient(
        session,
        base_url=base_url,
        token="secret-api-token",
        version="v1",
        sleep=_no_sleep,
        dns_resolver=resolver,
        **timeouts,  # type: ignore[arg-type]
    )


# ---- which addresses are accepted ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/files/plain.mp4",  # the file host: another port than the API
        "https://127.0.0.1:{port}/files/plain.mp4",
        "https://[::1]/files/plain.mp4",
        "https://169.254.169.254/latest/meta-data",
        "https://example.com/files/plain.mp4",
        "https://replicate.delivery.example.com/x.mp4",
        "https://notreplicate.delivery/x.mp4",
        "http://replicate.delivery/x.mp4",  # unencrypted
        "http://pbxt.replicate.delivery/x.mp4",
        "https://user:pw@replicate.delivery/x.mp4",
        "ftp://replicate.delivery/x.mp4",
        "file:///etc/passwd",
        "/files/plain.mp4",
    ],
)
async def test_outputs_anywhere_else_are_refused_without_a_request(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, host: FileHost, url: str
) -> None:
    resolver = StaticResolver("93.184.216.34")
    client = make_client(http, prediction_api.base_url, resolver=lambda: resolver)
    port = host.origin.rsplit(":", 1)[1]
    with pytest.raises(DownloadError, match=r"Refusing|not allowed by this bot's settings"):
        await client.download(url.format(port=port), max_bytes=2**20)
    assert host.seen == [] and resolver.asked == []


def _is_delivery_host(host: str) -> bool:
    """True if the default OUTPUT_URL_PREFIXES admit an https file on this host."""
    return any(prefix.matches(f"https://{host}/x.mp4") for prefix in DEFAULT_OUTPUT_PREFIXES)


def test_delivery_hosts_and_public_addresses() -> None:
    assert _is_delivery_host("replicate.delivery") and _is_delivery_host("PBXT.Replicate.Delivery.")
    assert not _is_delivery_host("replicate.delivery.evil.com")
    assert not _is_delivery_host("evilreplicate.delivery")
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"):
        assert is_public_address(address)
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "240.0.0.1",
        "224.0.0.1",
        "::1",
        "fe80::1%eth0",
        "fc00::1",
        "::ffff:127.0.0.1",
        "not an address",
    ):
        assert not is_public_address(address), address


@pytest.mark.parametrize(
    "addresses", [("127.0.0.1",), ("10.0.0.5",), ("93.184.216.34", "192.168.0.2"), ("::1",)]
)
async def test_a_delivery_host_resolving_to_a_local_address_is_refused(
    http: aiohttp.ClientSession,
    prediction_api: FakePredictionAPI,
    host: FileHost,
    addresses: tuple[str, ...],
) -> None:
    resolver = StaticResolver(*addresses)
    client = make_client(http, prediction_api.base_url, resolver=lambda: resolver)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="local or private network"):
        await client.download("https://pbxt.replicate.delivery/files/plain.mp4", max_bytes=2**20)
    assert resolver.asked and host.seen == []  # resolved, refused, never connected
    assert time.monotonic() - started < 5  # refused at once, not retried with backoff


async def test_public_address_resolver_passes_public_answers_through() -> None:
    resolver = PublicAddressResolver(StaticResolver("93.184.216.34", "2606:4700::1"))
    results = await resolver.resolve("pbxt.replicate.delivery", 443)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700::1"]
    await resolver.close()


# ---- the API origin: files served by a gateway, the token, redirects ------------------------


async def test_files_on_the_api_origin_download_without_the_token(
    http: aiohttp.ClientSession, host: FileHost
) -> None:
    client = make_client(http, f"{host.origin}/v1")
    assert await client.download(f"{host.origin}/files/plain.mp4", max_bytes=2**20) == PAYLOAD
    assert await client.download(f"{host.origin}/files/chunked.mp4", max_bytes=2**20) == PAYLOAD
    assert len(host.seen) == 2
    assert all("Authorization" not in headers for headers in host.seen)
    assert all("secret-api-token" not in str(headers) for headers in host.seen)


async def test_a_redirect_from_the_file_host_is_refused(
    http: aiohttp.ClientSession, host: FileHost
) -> None:
    client = make_client(http, f"{host.origin}/v1")
    with pytest.raises(DownloadError, match="redirect"):
        await client.download(f"{host.origin}/files/redirect.mp4", max_bytes=2**20)
    assert [seen["path"] for seen in host.seen] == ["/files/redirect.mp4"]  # not followed


async def test_an_api_redirect_is_an_error_and_the_token_stays_put(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, host: FileHost
) -> None:
    client = make_client(http, prediction_api.base_url)
    prediction_api.inject(
        "GET",
        r"/v1/predictions/abc",
        status=307,
        body="",
        headers={"Location": f"{host.origin}/v1/predictions/abc"},
        times=10,
    )
    with pytest.raises(PredictionAPIError, match="redirect") as caught:
        await client.get("abc")
    assert caught.value.status == 307
    assert host.seen == []  # the token never travelled to the other host
    assert sum(1 for r in prediction_api.requests if r.path == "/v1/predictions/abc") == 1


async def test_a_redirected_create_is_refused_without_a_second_attempt(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, host: FileHost
) -> None:
    client = make_client(http, prediction_api.base_url)
    prediction_api.inject(
        "POST", r"/v1/predictions", status=301, body="", headers={"Location": host.origin}
    )
    with pytest.raises(PredictionAPIError, match="REPLICATE_API_BASE"):
        await client.create(INPUT)
    assert prediction_api.create_requests == 1 and host.seen == []


# ---- size and time --------------------------------------------------------------------------


async def test_download_to_streams_into_a_file(
    http: aiohttp.ClientSession, host: FileHost, tmp_path: Path
) -> None:
    client = make_client(http, f"{host.origin}/v1")
    dest = tmp_path / "out.mp4"
    size = await client.download_to(f"{host.origin}/files/chunked.mp4", dest, max_bytes=2**20)
    assert size == len(PAYLOAD) and dest.read_bytes() == PAYLOAD
    data_uri = "data:video/mp4;base64," + base64.b64encode(PAYLOAD).decode()
    size = await client.download_to(data_uri, dest, max_bytes=2**20)
    assert size == len(PAYLOAD) and dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", ["plain.mp4", "chunked.mp4"])
async def test_an_oversized_file_is_refused_and_nothing_is_left_behind(
    http: aiohttp.ClientSession, host: FileHost, tmp_path: Path, name: str
) -> None:
    client = make_client(http, f"{host.origin}/v1")
    dest = tmp_path / "out.mp4"
    with pytest.raises(DownloadError, match="larger than the download limit"):
        await client.download_to(f"{host.origin}/files/{name}", dest, max_bytes=4000)
    assert not dest.exists()
    with pytest.raises(DownloadError, match="larger"):
        await client.download(f"{host.origin}/files/{name}", max_bytes=4000)
    too_big = "data:video/mp4;base64," + base64.b64encode(PAYLOAD).decode()
    with pytest.raises(DownloadError, match="larger"):
        await client.download_to(too_big, dest, max_bytes=4000)
    assert not dest.exists()


async def test_a_stalled_download_fails_within_the_stall_time_out(
    http: aiohttp.ClientSession, host: FileHost, tmp_path: Path
) -> None:
    client = make_client(http, f"{host.origin}/v1", download_stall_timeout=0.3)
    dest = tmp_path / "out.mp4"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"sent nothing for 0\.3 seconds"):
        await client.download_to(f"{host.origin}/files/stall.mp4", dest, max_bytes=2**20)
    assert time.monotonic() - started < 3
    assert not dest.exists() and len(host.seen) == 1  # a stall is not retried


async def test_a_download_that_never_ends_hits_the_overall_time_out(
    http: aiohttp.ClientSession, host: FileHost
) -> None:
    client = make_client(
        http, f"{host.origin}/v1", download_stall_timeout=5.0, download_timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"longer than 0\.5 seconds"):
        await client.download(f"{host.origin}/files/trickle.mp4", max_bytes=2**20)
    assert time.monotonic() - started < 4


async def test_errors_never_name_the_address_or_its_credentials(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI
) -> None:
    client = make_client(http, prediction_api.base_url)
    urls: list[Any] = [
        "https://user:hunter2@example.com/x.mp4?token=t0k3n",
        "https://user:hunter2@replicate.delivery/x.mp4?token=t0k3n",
    ]
    for url in urls:
        with pytest.raises(DownloadError) as caught:
            await client.download(url, max_bytes=10)
        assert "hunter2" not in str(caught.value) and "t0k3n" not in str(caught.value)
