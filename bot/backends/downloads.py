"""Fetching output files: data URIs, the API's origin, and hosts OUTPUT_URL_PREFIXES allows.

Every download streams into a sink with a size cap, a stall time-out and an overall time-out,
never follows a redirect and never carries the API token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver

from bot.backends.base import DownloadError
from bot.backends.output_hosts import (
    LocalAddressRefused,
    OutputPrefix,
    PublicAddressResolver,
    allowed_prefix,
    output_url,
)

Sleep = Callable[[float], Awaitable[None]]


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


class OutputDownloader:
    """Downloads outputs within the limits, checking where each one lives first."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_origin: yarl.URL,
        prefixes: Sequence[OutputPrefix],
        stall_timeout: float,
        timeout: float,
        dns_resolver: Callable[[], AbstractResolver],
        max_attempts: int,
        backoff: Callable[[int], float],
        sleep: Sleep,
    ) -> None:
        self._session = session  # the bot's own: for the API's origin and trusted LAN hosts
        self._origin = api_origin
        # Where outputs may come from besides the API's origin and data: URIs.
        self._output_prefixes = tuple(prefixes)
        self._download_stall_timeout = stall_timeout
        self._download_timeout = timeout
        self._dns_resolver = dns_resolver
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._sleep = sleep

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


class _TransientDownload(Exception):
    """A download attempt failed in a way worth retrying."""


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
