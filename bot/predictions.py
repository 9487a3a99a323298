"""Client for Replicate's prediction HTTP API (or any gateway serving the same API)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from bot.output_hosts import (
    DEFAULT_OUTPUT_PREFIXES,
    DownloadError,
    LocalAddressRefused,
    OutputPrefix,
    PublicAddressResolver,
    allowed_prefix,
    output_url,
)

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
Sleep = Callable[[float], Awaitable[None]]


class PredictionAPIError(Exception):
    """The API refused or failed a request; `detail` is its explanation."""

    def __init__(self, detail: str, *, status: int | None = None, title: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.title = title
        self.retry_after: float | None = None  # seconds the API asked us to wait, if any


class RateLimited(PredictionAPIError):
    """The API kept answering 429, or asked for a longer wait than the client makes."""


class ServiceUnavailable(PredictionAPIError):
    """The API could not be reached or kept failing with server errors."""


class CreateOutcomeUnknown(ServiceUnavailable):
    """A create was sent but no answer came back: the prediction may exist."""


class SearchIncomplete(PredictionAPIError):
    """The prediction list had more pages than a search may read: nothing can be concluded."""


class PredictionNotFound(PredictionAPIError):
    """The API does not know this prediction id."""


class _Sink(Protocol):
    """Where downloaded bytes go."""

    def write(self, data: bytes) -> object:
        """Take the next chunk."""
        ...

    def reset(self) -> None:
        """Forget what was written (before a retry)."""
        ...


class _MemorySink:
    """Collect a download in memory."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Keep a chunk."""
        self._chunks.append(data)

    def reset(self) -> None:
        """Drop every chunk."""
        self._chunks.clear()

    def data(self) -> bytes:
        """Everything written, joined."""
        return b"".join(self._chunks)


class _FileSink:
    """Write a download into an open file."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, data: bytes) -> None:
        """Append a chunk (64 KiB writes to a local file are short enough for the loop)."""
        self._file.write(data)

    def reset(self) -> None:
        """Empty the file."""
        self._file.seek(0)
        self._file.truncate()


def _retryable_status(status: int) -> bool:
    """Server errors and throttling are worth another try."""
    return status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class Prediction:
    """A prediction as the API last reported it."""

    id: str
    status: str
    input: Mapping[str, Any] = field(default_factory=dict)
    output: Any = None
    error: str | None = None
    logs: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    version: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    data_removed: bool = False

    @classmethod
    def from_json(cls, data: object) -> Prediction:
        """Parse an API prediction object, refusing anything without an id and status."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise PredictionAPIError("The prediction API returned an unexpected answer.")
        status = data.get("status")
        if not isinstance(status, str):
            raise PredictionAPIError("The prediction API returned a prediction without status.")
        error = data.get("error")
        return cls(
            id=data["id"],
            status=status,
            input=data.get("input") or {},
            output=data.get("output"),
            error=None if error is None else str(error),
            logs=data.get("logs") or "",
            metrics=data.get("metrics") or {},
            version=data.get("version"),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            completed_at=data.get("completed_at"),
            data_removed=bool(data.get("data_removed", False)),
        )

    @property
    def is_terminal(self) -> bool:
        """True once the prediction will not change any more."""
        return self.status in TERMINAL_STATUSES

    @property
    def output_urls(self) -> list[str]:
        """The output as a list of URLs or data URIs, whatever shape the API used."""
        output = self.output
        if isinstance(output, str):
            return [output]
        if isinstance(output, list):
            return [item for item in output if isinstance(item, str)]
        return []

    @property
    def predict_time(self) -> float | None:
        """GPU seconds billed, once known."""
        value = self.metrics.get("predict_time")
        return float(value) if isinstance(value, int | float) else None


def version_id(version: str) -> str:
    """Return the bare version id of `owner/name:id` or `id`."""
    return version.rsplit(":", 1)[-1]


class PredictionClient:
    """Create, follow and cancel predictions on one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        token: str,
        version: str,
        wait_seconds: int = 60,
        webhook_url: str | None = None,
        webhook_events: tuple[str, ...] = ("completed",),
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        request_timeout: float = 30.0,
        download_stall_timeout: float = 30.0,
        download_timeout: float = 600.0,
        dns_resolver: Callable[[], AbstractResolver] = DefaultResolver,
        output_prefixes: Sequence[OutputPrefix] = DEFAULT_OUTPUT_PREFIXES,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        # The token goes to this origin only (scheme, host and port of the configured base).
        self._origin = yarl.URL(self._base).origin()
        self._download_stall_timeout = download_stall_timeout
        self._download_timeout = download_timeout
        self._dns_resolver = dns_resolver
        # Where outputs may come from besides the API's origin and data: URIs.
        self._output_prefixes = tuple(output_prefixes)
        self._token = token
        self.version = version
        self._wait_seconds = max(1, min(60, wait_seconds))
        self.webhook_url = webhook_url
        self._webhook_events = webhook_events
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._request_timeout = request_timeout
        self._sleep = sleep
        self._rng = rng or random.Random()

    @property
    def base_url(self) -> str:
        """The configured API base, without a trailing slash."""
        return self._base

    @property
    def pushes_results(self) -> bool:
        """True if the API is asked to send each prediction's end to our webhook."""
        return self.webhook_url is not None

    async def create(self, api_input: Mapping[str, Any], *, wait: bool | None = None) -> Prediction:
        """Start a prediction; with `wait`, hold the request until it ends or the window closes.

        By default it holds only without a webhook: with one, the end is pushed to us, and an
        answer at once records the prediction's id at once (nothing to search for after a crash).
        """
        if wait is None:
            wait = not self.pushes_results
        headers = {"Prefer": f"wait={self._wait_seconds}"} if wait else {}
        timeout = self._wait_seconds + self._request_timeout if wait else self._request_timeout
        body: dict[str, Any] = {"version": self.version, "input": dict(api_input)}
        if self.webhook_url is not None:
            body["webhook"] = self.webhook_url
            body["webhook_events_filter"] = list(self._webhook_events)
        data = await self._request(
            "POST",
            f"{self._base}/predictions",
            body=body,
            headers=headers,
            timeout=timeout,
            idempotent=False,
        )
        return Prediction.from_json(data)

    async def webhook_secret(self) -> str:
        """Fetch the account's webhook signing secret (`whsec_...`)."""
        data = await self._request("GET", f"{self._base}/webhooks/default/secret")
        key = data.get("key") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            raise PredictionAPIError("The prediction API returned no webhook signing secret.")
        return key

    async def get(self, prediction_id: str) -> Prediction:
        """Fetch a prediction by id, from the configured base (never from `urls.get`)."""
        data = await self._request("GET", self._prediction_url(prediction_id))
        return Prediction.from_json(data)

    async def cancel(self, prediction_id: str) -> Prediction:
        """Ask the API to cancel a prediction; cancelling twice is harmless."""
        data = await self._request("POST", self._prediction_url(prediction_id) + "/cancel")
        return Prediction.from_json(data)

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
        max_pages: int = 20,
    ) -> Prediction | None:
        """Find a prediction of this version with exactly this input, created after a time.

        None means the whole list since then was read and holds no match; a list too long to
        read raises SearchIncomplete, since "not found" would then be a guess.
        """
        wanted_version = version_id(self.version)
        wanted_input = _normalise(api_input)
        after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created_after - 120))
        url = f"{self._base}/predictions?" + urllib.parse.urlencode({"created_after": after})
        for _ in range(max_pages):
            page = await self._request("GET", url)
            if not isinstance(page, dict):
                return None
            for item in page.get("results") or []:
                if not isinstance(item, dict):
                    continue
                same_version = version_id(str(item.get("version") or "")) == wanted_version
                if same_version and _normalise(item.get("input") or {}) == wanted_input:
                    found = Prediction.from_json(item)
                    if accept is None or await accept(found):
                        return found
            next_url = page.get("next")
            if not isinstance(next_url, str) or not next_url:
                return None
            # Keep the token on the configured host: take only the cursor from `next`.
            query = yarl.URL(next_url).query
            url = f"{self._base}/predictions?" + urllib.parse.urlencode(dict(query))
        raise SearchIncomplete(f"More than {max_pages} pages of predictions to search.")

    async def download(self, url: str, *, max_bytes: int) -> bytes:
        """Fetch an output file or decode a data URI, refusing anything over `max_bytes`."""
        sink = _MemorySink()
        await self._fetch(url, max_bytes, sink)
        return sink.data()

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        """Stream an output file (or data URI) into `dest` and return its size.

        On any failure the partial file is removed, so `dest` exists only when complete.
        """
        try:
            with dest.open("wb") as file:
                return await self._fetch(url, max_bytes, _FileSink(file))
        except BaseException:
            # Synchronous on purpose: it must happen even when the task is being cancelled.
            dest.unlink(missing_ok=True)  # noqa: ASYNC240
            raise

    async def _fetch(self, url: str, max_bytes: int, sink: _Sink) -> int:
        """Check where an output lives, then fetch it into a sink within the time limits."""
        if url.startswith("data:"):
            data = _decode_data_uri(url, max_bytes)
            sink.write(data)
            return len(data)
        target = output_url(url)
        # The API's origin and prefixes trusted as written (LAN hosts) skip the address check.
        trusted = (
            target.origin() == self._origin
            or allowed_prefix(target, self._output_prefixes).trusted_as_written
        )
        try:
            async with asyncio.timeout(self._download_timeout):
                for attempt in range(self._max_attempts):
                    try:
                        if trusted:
                            return await self._download_once(self._session, url, max_bytes, sink)
                        return await self._download_from_delivery(url, max_bytes, sink)
                    except _TransientDownload as exc:
                        if attempt + 1 >= self._max_attempts:
                            raise DownloadError(str(exc)) from None
                        await self._sleep(self._backoff(attempt))
        except TimeoutError:
            raise DownloadError(
                f"The output took longer than {self._download_timeout:g} seconds to download."
            ) from None
        raise DownloadError("The output could not be downloaded.")

    async def _download_from_delivery(self, url: str, max_bytes: int, sink: _Sink) -> int:
        """Download from a public host through a connector that refuses local addresses."""
        resolver = PublicAddressResolver(self._dns_resolver())
        # A connector of its own: the address check lives in its resolver, which sees every
        # address the connection could use (a check before connecting could be re-bound).
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=1)
        try:
            async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
                return await self._download_once(session, url, max_bytes, sink)
        finally:
            await resolver.close()

    async def _download_once(
        self, session: aiohttp.ClientSession, url: str, max_bytes: int, sink: _Sink
    ) -> int:
        """One streaming download attempt with a size cap; no credentials are sent."""
        stall = self._download_stall_timeout
        # sock_read bounds each wait for bytes: a host that stops sending fails after `stall`.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=stall, sock_read=stall)
        sink.reset()
        try:
            # The prediction token must never travel to the file host.
            async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    raise DownloadError(
                        "The file host answered with a redirect, which the bot does not follow."
                    )
                if _retryable_status(resp.status):
                    raise _TransientDownload(f"The file host answered {resp.status}.")
                if resp.status != 200:
                    raise DownloadError(f"The output file could not be fetched ({resp.status}).")
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise DownloadError("The output file is larger than the download limit.")
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError("The output file is larger than the download limit.")
                    sink.write(chunk)
                return size
        except aiohttp.ServerTimeoutError:
            raise DownloadError(
                f"The file host sent nothing for {stall:g} seconds; the download was stopped."
            ) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, LocalAddressRefused):
                raise DownloadError(
                    "The output's address points into a local or private network; "
                    "the bot does not download from there."
                ) from None
            raise _TransientDownload(f"The download failed: {type(exc).__name__}.") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _TransientDownload(f"The download failed: {type(exc).__name__}.") from None

    def _prediction_url(self, prediction_id: str) -> str:
        """Build a prediction's URL from the configured base."""
        return f"{self._base}/predictions/{urllib.parse.quote(prediction_id, safe='')}"

    async def _request(
        self,
        method: str,
        url: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Send one API call with retries that never risk a second paid prediction."""
        if yarl.URL(url).origin() != self._origin:
            # Every URL is built from the base; this guards the token against a future slip.
            raise PredictionAPIError("Refusing to send the API token to another host.")
        all_headers = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        client_timeout = aiohttp.ClientTimeout(total=timeout or self._request_timeout)
        last_error: PredictionAPIError | None = None
        for attempt in range(self._max_attempts):
            try:
                async with self._session.request(
                    method,
                    url,
                    json=body,
                    headers=all_headers,
                    timeout=client_timeout,
                    allow_redirects=False,
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except aiohttp.ClientConnectorError:
                # Nothing was sent, so even a create is safe to repeat.
                last_error = ServiceUnavailable("The prediction API could not be reached.")
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not idempotent:
                    raise CreateOutcomeUnknown(
                        "The prediction API did not answer the create request "
                        f"({type(exc).__name__}); it may have been accepted."
                    ) from None
                last_error = ServiceUnavailable(
                    f"The prediction API did not answer ({type(exc).__name__})."
                )
            else:
                if 200 <= status < 300:
                    try:
                        return json.loads(raw)
                    except ValueError:
                        if not idempotent:
                            raise CreateOutcomeUnknown(
                                "The prediction API answered the create with something that "
                                "is not JSON."
                            ) from None
                        last_error = ServiceUnavailable(
                            "The prediction API answered with something that is not JSON."
                        )
                elif 300 <= status < 400:
                    # A redirect could carry the token elsewhere: it is never followed.
                    raise PredictionAPIError(
                        f"The prediction API answered with a redirect ({status}), which the "
                        "bot does not follow; check REPLICATE_API_BASE.",
                        status=status,
                    )
                else:
                    error = _error_from(status, raw)
                    if status == 429:
                        last_error = error
                        if retry_after is not None and retry_after > self._backoff_cap:
                            # A long wait belongs to the caller, where Cancel can cut it short.
                            error.retry_after = retry_after
                            raise error
                        if attempt + 1 < self._max_attempts:
                            delay = (
                                retry_after if retry_after is not None else self._backoff(attempt)
                            )
                            log.warning(
                                "prediction API throttled %s; retrying in %.1fs", method, delay
                            )
                            await self._sleep(delay)
                        continue
                    if status >= 500 and idempotent:
                        last_error = error
                    elif status >= 500:
                        raise CreateOutcomeUnknown(
                            f"The prediction API failed the create request ({status}); "
                            "it may have been accepted."
                        )
                    else:
                        raise error
            if attempt + 1 < self._max_attempts:
                await self._sleep(self._backoff(attempt))
        assert last_error is not None
        raise last_error

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff."""
        ceiling = min(self._backoff_cap, self._backoff_base * (2**attempt))
        return self._rng.uniform(ceiling / 2, ceiling)


class _TransientDownload(Exception):
    """A download attempt failed in a way worth retrying."""


def _error_from(status: int, raw: bytes) -> PredictionAPIError:
    """Turn an error response into a typed error carrying the API's `detail`."""
    detail: str | None = None
    title: str | None = None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        detail = str(data["detail"]) if data.get("detail") is not None else None
        title = str(data["title"]) if data.get("title") is not None else None
    if detail is None:
        detail = f"The prediction API answered {status}."
    if status == 429:
        return RateLimited(detail, status=status, title=title)
    if status == 404:
        return PredictionNotFound(detail, status=status, title=title)
    if status >= 500:
        return ServiceUnavailable(detail, status=status, title=title)
    return PredictionAPIError(detail, status=status, title=title)


def _retry_after(value: str | None) -> float | None:
    """Parse Retry-After given in seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """Decode a `data:` URI as a self-hosted Cog server returns it."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise DownloadError("The output is a malformed data URI.")
    if len(payload) * 3 // 4 > max_bytes:
        raise DownloadError("The output file is larger than the download limit.")
    if header.endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise DownloadError("The output is a malformed data URI.") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise DownloadError("The output file is larger than the download limit.")
    return data


def _normalise(value: Mapping[str, Any]) -> dict[str, Any]:
    """Compare inputs by value, treating 7.5 and 7.50 alike."""
    return {
        key: (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
        for key, v in value.items()
    }
