"""OUTPUT_URL_PREFIXES: the prefix parser, and downloads from other hosts through the client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from bot.backends.base import DownloadError
from bot.backends.output_hosts import (
    DEFAULT_OUTPUT_PREFIXES,
    DEFAULT_OUTPUT_URL_PREFIXES,
    OutputPrefix,
    parse_output_prefixes,
)
from bot.backends.replicate import PredictionClient
from bot.storage.sqlite import SQLiteStore
from tests.fakes.dns import StaticResolver
from tests.fakes.predictions import FakePredictionAPI, OtherHost
from tests.scheduling import RecordingReporter, started_scheduler, submit

PAYLOAD = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


# ---- the parser -----------------------------------------------------------------------------


def test_the_default_setting_parses_to_replicate_delivery_and_its_subdomains() -> None:
    assert parse_output_prefixes(DEFAULT_OUTPUT_URL_PREFIXES) == DEFAULT_OUTPUT_PREFIXES
    exact, wildcard = DEFAULT_OUTPUT_PREFIXES
    assert exact == OutputPrefix("https", "replicate.delivery", False, 443, "/", False)
    assert wildcard == OutputPrefix("https", "replicate.delivery", True, 443, "/", False)
    assert [str(p) for p in DEFAULT_OUTPUT_PREFIXES] == DEFAULT_OUTPUT_URL_PREFIXES.split(",")
    assert parse_output_prefixes("") == parse_output_prefixes(" , ") == ()


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://pbxt.replicate.delivery/a/b.mp4", True),
        ("https://a.b.c.replicate.delivery/x.mp4", True),  # several labels
        ("https://PBXT.Replicate.Delivery./x.mp4", True),  # case and a trailing dot
        ("https://replicate.delivery/x.mp4", False),  # `*.` is for subdomains only
        ("https://evilreplicate.delivery/x.mp4", False),
        ("https://replicate.delivery.evil.com/x.mp4", False),
        ("http://pbxt.replicate.delivery/x.mp4", False),  # another scheme
        ("https://pbxt.replicate.delivery:8443/x.mp4", False),  # another port
        ("https://pbxt.replicate.delivery:443/x.mp4", True),  # the default port, written
        ("https://user:pw@pbxt.replicate.delivery/x.mp4", False),  # credentials
    ],
)
def test_a_wildcard_matches_subdomains(url: str, allowed: bool) -> None:
    assert OutputPrefix.parse("https://*.replicate.delivery/").matches(url) is allowed


@pytest.mark.parametrize(
    ("prefix", "url", "allowed"),
    [
        ("https://files.example.com/out", "https://files.example.com/out", True),
        ("https://files.example.com/out", "https://files.example.com/out/x.mp4", True),
        ("https://files.example.com/out", "https://files.example.com/outside/x.mp4", False),
        ("https://files.example.com/out/", "https://files.example.com/out/x.mp4", True),
        ("https://files.example.com/out/", "https://files.example.com/out", False),
        ("https://files.example.com/out/", "https://files.example.com/outside", False),
        ("https://files.example.com/out/", "https://files.example.com/out/../etc/x", False),
        ("https://files.example.com/out/", "https://files.example.com/a/../out/x.mp4", True),
        ("https://files.example.com/out/", "https://files.example.com/out%2F..%2Fx", False),
        ("https://files.example.com", "https://files.example.com/any/x.mp4", True),
        ("https://files.example.com/out/", "https://FILES.example.com/out/x.mp4?sig=1", True),
        ("https://files.example.com/Out/", "https://files.example.com/out/x.mp4", False),
        ("http://10.0.0.5:9000/files/", "http://10.0.0.5:9000/files/x.mp4", True),
        ("http://10.0.0.5:9000/files/", "http://10.0.0.5/files/x.mp4", False),
        ("http://[fd00::1]:9000/", "http://[fd00:0::1]:9000/x.mp4", True),
        ("http://uploads.lan/", "http://uploads.lan:80/x.mp4", True),
        ("http://uploads.lan/", "https://uploads.lan/x.mp4", False),
    ],
)
def test_paths_match_on_segment_boundaries(prefix: str, url: str, allowed: bool) -> None:
    assert OutputPrefix.parse(prefix).matches(url) is allowed


@pytest.mark.parametrize(
    ("entry", "trusted"),
    [
        ("http://10.0.0.5:9000/files/", True),
        ("http://127.0.0.1:8123/", True),
        ("http://uploads.lan/", True),
        ("http://files.example.com/", True),  # written with http://: the operator's word
        ("https://192.168.1.20/", True),  # an IP literal
        ("https://files.internal/", True),
        ("https://nas/", True),  # one label: a LAN name
        ("https://*.cluster.local/", True),
        ("https://replicate.delivery/", False),
        ("https://files.example.com:8443/outputs/", False),
        ("https://*.cdn.example.com/", False),
    ],
)
def test_which_entries_are_trusted_as_written(entry: str, trusted: bool) -> None:
    assert OutputPrefix.parse(entry).trusted_as_written is trusted


@pytest.mark.parametrize(
    "entry",
    [
        "replicate.delivery",
        "/outputs/",
        "ftp://files.example.com/",
        "file:///srv/outputs/",
        "https://",
        "https://user:pw@files.example.com/",
        "https://files.example.com/out?sig=1",
        "https://files.example.com/out#frag",
        "https://files.example.com:99999/",
        "https://*.10.0.0.5/",
        "https://files.*.example.com/",
        "https://*/",
        "https://*.com/",  # most of the internet, and no address check besides
        "http://*.co/",
    ],
)
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        OutputPrefix.parse(entry)


def test_an_entry_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="credentials") as caught:
        parse_output_prefixes("https://replicate.delivery/,https://bob:hunter2@files.example.com/")
    assert "hunter2" not in str(caught.value)


# ---- downloads through the client, from another server ---------------------------------------


@pytest.fixture
async def files() -> AsyncIterator[OtherHost]:
    """A file host on another port of 127.0.0.1 than the fake API."""
    async with OtherHost(body=PAYLOAD) as host:
        yield host


async def _no_sleep(_seconds: float) -> None:
    """Backoff that does not wait."""


def make_client(
    http: aiohttp.ClientSession,
    api: FakePredictionAPI,
    prefixes: Sequence[OutputPrefix] = DEFAULT_OUTPUT_PREFIXES,
    resolver: AbstractResolver | None = None,
) -> PredictionClient:
    """The real client on the fake API, allowing outputs under `prefixes`."""
    dns = resolver or StaticResolver("93.184.216.34")
    return PredictionClient(
        http,
        base_url=api.base_url,
        token=api.token,
        version=api.version,
        sleep=_no_sleep,
        output_prefixes=prefixes,
        dns_resolver=lambda: dns,
    )


async def test_an_output_under_a_listed_prefix_on_another_port_is_downloaded(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, files: OtherHost
) -> None:
    assert files.origin != prediction_api.origin
    prefixes = parse_output_prefixes(f"https://replicate.delivery/,{files.origin}/outputs/")
    client = make_client(http, prediction_api, prefixes)
    assert await client.download(f"{files.origin}/outputs/a/x.mp4", max_bytes=2**20) == PAYLOAD
    assert [seen.path for seen in files.seen] == ["/outputs/a/x.mp4"]
    assert files.seen[0].header("Authorization") is None
    assert prediction_api.token not in str(files.seen[0].headers)


async def test_a_listed_lan_name_is_trusted_as_written(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, files: OtherHost
) -> None:
    port = files.origin.rsplit(":", 1)[1]
    resolver = StaticResolver("93.184.216.34")  # would send a name to a public address
    client = make_client(
        http, prediction_api, parse_output_prefixes(f"http://localhost:{port}/"), resolver
    )
    url = f"http://localhost:{port}/outputs/x.mp4"
    assert await client.download(url, max_bytes=2**20) == PAYLOAD
    assert resolver.asked == [] and len(files.seen) == 1  # no public-address check


@pytest.mark.parametrize(
    ("allowed", "path"),
    [
        ("https://replicate.delivery/,https://*.replicate.delivery/", "/outputs/x.mp4"),
        ("{origin}/outputs", "/outputside/x.mp4"),  # not on a segment boundary
        ("{origin}/outputs/", "/other/x.mp4"),
        ("http://localhost:{port}/outputs/", "/outputs/x.mp4"),  # another host name
        ("", "/outputs/x.mp4"),  # empty: only the API's origin and data: URIs
    ],
)
async def test_an_output_on_an_unlisted_host_is_refused_without_a_request(
    http: aiohttp.ClientSession,
    prediction_api: FakePredictionAPI,
    files: OtherHost,
    caplog: pytest.LogCaptureFixture,
    allowed: str,
    path: str,
) -> None:
    port = files.origin.rsplit(":", 1)[1]
    prefixes = parse_output_prefixes(allowed.format(origin=files.origin, port=port))
    client = make_client(http, prediction_api, prefixes)
    with (
        caplog.at_level(logging.WARNING, logger="bot.backends.output_hosts"),
        pytest.raises(DownloadError) as caught,
    ):
        await client.download(f"{files.origin}{path}", max_bytes=2**20)
    assert str(caught.value) == (
        "The output's host (127.0.0.1) is not allowed by this bot's settings."
    )
    assert files.seen == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"refused an output on host 127.0.0.1:{port}: "
        "add its URL prefix to OUTPUT_URL_PREFIXES to allow it"
    ]


async def test_credentials_are_refused_even_under_a_listed_prefix(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, files: OtherHost
) -> None:
    client = make_client(http, prediction_api, parse_output_prefixes(f"{files.origin}/"))
    url = files.origin.replace("http://", "http://bob:hunter2@") + "/outputs/x.mp4"
    with pytest.raises(DownloadError, match="credentials") as caught:
        await client.download(url, max_bytes=2**20)
    assert "hunter2" not in str(caught.value) and files.seen == []


def test_a_wildcard_over_a_private_suffix_is_allowed() -> None:
    prefix = OutputPrefix.parse("http://*.lan/outputs/")
    assert prefix.trusted_as_written and prefix.matches("http://gpu-a.lan/outputs/x.mp4")


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("/outputs/..%2Fadmin/x.mp4", "leaves its folder"),
        ("/outputs/..%2fadmin/x.mp4", "leaves its folder"),
        ("/outputs/x/..%2f..%2fsecret", "leaves its folder"),
        ("/outputs/..%5Cadmin", "leaves its folder"),
        ("/outputs/..\\admin", "leaves its folder"),
        ("/outputs/..;/admin", "leaves its folder"),  # `..` to servers that read parameters
        # Dot segments are resolved before the prefix is checked: /admin is not under it.
        ("/outputs/%2e%2e/admin", "not allowed"),
    ],
)
async def test_an_output_path_that_could_leave_its_folder_is_refused_without_a_request(
    http: aiohttp.ClientSession,
    prediction_api: FakePredictionAPI,
    files: OtherHost,
    path: str,
    refusal: str,
) -> None:
    client = make_client(http, prediction_api, parse_output_prefixes(f"{files.origin}/outputs/"))
    with pytest.raises(DownloadError, match=refusal):
        await client.download(f"{files.origin}{path}", max_bytes=2**20)
    assert files.seen == []


async def test_a_redirect_from_a_listed_host_to_an_unlisted_one_is_not_followed(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, files: OtherHost
) -> None:
    async with OtherHost(body=PAYLOAD) as elsewhere:
        files.redirects["/outputs/moved.mp4"] = f"{elsewhere.origin}/outputs/x.mp4"
        client = make_client(http, prediction_api, parse_output_prefixes(f"{files.origin}/"))
        with pytest.raises(DownloadError, match="redirect"):
            await client.download(f"{files.origin}/outputs/moved.mp4", max_bytes=2**20)
        assert [seen.path for seen in files.seen] == ["/outputs/moved.mp4"]
        assert elsewhere.seen == []


async def test_the_size_cap_holds_for_a_listed_host(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, files: OtherHost
) -> None:
    client = make_client(http, prediction_api, parse_output_prefixes(f"{files.origin}/outputs/"))
    with pytest.raises(DownloadError, match="larger than the download limit"):
        await client.download(f"{files.origin}/outputs/x.mp4", max_bytes=1000)


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        (DEFAULT_OUTPUT_URL_PREFIXES, "https://pbxt.replicate.delivery/x.mp4"),
        (DEFAULT_OUTPUT_URL_PREFIXES, "https://replicate.delivery/x.mp4"),
        ("https://files.example.com/outputs/", "https://files.example.com/outputs/x.mp4"),
    ],
)
async def test_defaults_and_public_names_still_refuse_local_addresses(
    http: aiohttp.ClientSession, prediction_api: FakePredictionAPI, allowed: str, url: str
) -> None:
    resolver = StaticResolver("127.0.0.1")  # a hostile DNS answer: loopback
    client = make_client(http, prediction_api, parse_output_prefixes(allowed), resolver)
    with pytest.raises(DownloadError, match="local or private network"):
        await client.download(url, max_bytes=2**20)
    assert resolver.asked  # resolved, then refused before any connection


# ---- end to end: the real scheduler ---------------------------------------------------------


@contextlib.asynccontextmanager
async def outputs_elsewhere(api: FakePredictionAPI) -> AsyncIterator[OtherHost]:
    """Another host serving the API's sample, where the API's output URLs now point."""
    async with OtherHost(body=api.sample) as outputs:
        api.output_base = f"{outputs.origin}/outputs"
        yield outputs


async def run_one_job(
    client: PredictionClient, store: SQLiteStore, reporter: RecordingReporter
) -> None:
    """Submit one job to the real scheduler and wait until it is delivered or fails."""
    async with started_scheduler(store, client, reporter) as scheduler:
        await submit(scheduler)
        await reporter.wait_for(lambda: reporter.delivered or reporter.failures)


async def test_a_job_whose_output_is_on_a_listed_host_is_delivered(
    http: aiohttp.ClientSession,
    prediction_api: FakePredictionAPI,
    store: SQLiteStore,
    reporter: RecordingReporter,
) -> None:
    async with outputs_elsewhere(prediction_api) as outputs:
        prefixes = parse_output_prefixes(f"{DEFAULT_OUTPUT_URL_PREFIXES},{outputs.origin}/outputs/")
        await run_one_job(make_client(http, prediction_api, prefixes), store, reporter)
        assert reporter.failures == []
        assert reporter.files == [prediction_api.sample]
        assert [seen.path for seen in outputs.seen] == [f"/outputs/{prediction_api.latest.id}.mp4"]
        assert prediction_api.downloads == 0  # fetched from the other host, not the API


async def test_a_job_whose_output_is_on_an_unlisted_host_fails_with_a_clear_reason(
    http: aiohttp.ClientSession,
    prediction_api: FakePredictionAPI,
    store: SQLiteStore,
    reporter: RecordingReporter,
) -> None:
    async with outputs_elsewhere(prediction_api) as outputs:
        client = make_client(http, prediction_api)  # the defaults: replicate.delivery only
        await run_one_job(client, store, reporter)
        assert reporter.delivered == []
        [(_job, reason)] = reporter.failures
        assert reason == (
            "The animation could not be downloaded: "
            "The output's host (127.0.0.1) is not allowed by this bot's settings."
        )
        assert outputs.seen == []
