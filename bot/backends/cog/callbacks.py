"""The Cog servers' callbacks on the bot's listener: webhooks, and output uploads.

Cog signs neither, so each prediction's webhook path carries its own secret token, and an
upload must name (in `X-Prediction-Id`) the server id of a prediction the bot placed, which
carries a keyed hash. Anything else, or anything for a prediction that has ended, answers 404
before a byte of its body is read, and the connection is not kept (aiohttp discards, never
buffers, what still arrives for a few seconds). Bodies are read in chunks against the
download cap (a `completed` webhook holds the whole `data:` URI, far above aiohttp's 1 MiB
default); a Content-Length over it is refused at once. A prediction may upload
FILES_PER_PREDICTION files; each is written under a temporary name and renamed once whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import aiohttp
import yarl
from aiohttp import web

from bot.backends.cog.outputs import data_answer_limit
from bot.backends.cog.pool import CogPool

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 256 * 1024
_WRITE_BATCH = 4 * 1024 * 1024  # bytes gathered before one write in a thread
_PARSE_IN_THREAD = 8 * 1024 * 1024  # a body this big is parsed off the event loop
FILES_PER_PREDICTION = 4  # the model makes one MP4; a few more leave room, not a disk


class TooLarge(Exception):
    """A body went over its limit."""


class CogCallbacks:
    """aiohttp handlers for one pool's webhooks and uploads, under COG_CALLBACK_URL's path."""

    def __init__(self, pool: CogPool, *, callback_url: str, max_bytes: int) -> None:
        self._pool = pool
        self._base = callback_url.rstrip("/")
        self._prefix = yarl.URL(self._base).path.rstrip("/")
        self._max_bytes = max_bytes
        self._max_webhook = data_answer_limit(max_bytes)
        self._uploading: Counter[str] = Counter()  # token -> uploads being received
        # Served by start() when no other listener takes the routes (share them with routes()).
        self.app = web.Application()
        self.app.add_routes(self.routes())
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def routes(self) -> list[web.RouteDef]:
        """The routes to add to the bot's listener."""
        return [
            web.post(f"{self._prefix}/webhook/{{token}}", self.webhook),
            web.put(f"{self._prefix}/uploads/{{name}}", self.upload),
        ]

    async def start(self, host: str, port: int) -> None:
        """Listen on a listener of their own (when there are no Replicate webhooks)."""
        runner = self._runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        log.info("listening for Cog callbacks on %s:%s%s", host, self.port, self._prefix or "/")

    async def stop(self) -> None:
        """Stop a listener of their own."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def webhook(self, request: web.Request) -> web.Response:
        """Take a prediction's progress or end, if the token is a running prediction's."""
        token = request.match_info["token"]
        if not self._pool.expects_webhook(token):
            return _refuse(404, "unknown")
        if _declared_over(request, self._max_webhook):
            return _refuse(413, "too large")
        try:
            raw = b"".join([chunk async for chunk in _chunks(request, self._max_webhook)])
            if len(raw) > _PARSE_IN_THREAD:
                body = await asyncio.to_thread(json.loads, raw)
            else:
                body = json.loads(raw)
        except TooLarge:
            return _refuse(413, "too large")
        except ValueError:
            return web.Response(status=400, text="not JSON\n")
        if not self._pool.take_webhook(token, body):
            return web.Response(status=404, text="unknown\n")
        return web.Response(text="taken\n")

    async def upload(self, request: web.Request) -> web.Response:
        """Store an output file for a running prediction of ours and say where it lives."""
        server_id = request.headers.get("X-Prediction-Id", "")
        tracked = self._pool.upload_target(server_id)
        if tracked is None:
            return _refuse(404, "unknown")
        if len(tracked.files) + self._uploading[tracked.token] >= FILES_PER_PREDICTION:
            return _refuse(429, "too many files")
        if _declared_over(request, self._max_bytes):
            return _refuse(413, "too large")
        name = _UNSAFE.sub("_", Path(request.match_info["name"]).name).lstrip(".")[:100]
        folder = self._pool.uploads_dir / tracked.token
        path = folder / (name or "output")
        # A leading dot: never the name of a finished upload (those are stripped of it).
        partial = folder / f".{uuid.uuid4().hex}.part"
        self._uploading[tracked.token] += 1
        try:
            await _stream_to(request, partial, self._max_bytes)
            if self._pool.upload_target(server_id) is not tracked:
                return _refuse(404, "ended")  # it ended (or was lost) while this arrived
            await asyncio.to_thread(partial.replace, path)
            url = f"{self._base}/uploads/{tracked.token}/{path.name}"
            tracked.files[url] = path
        except TooLarge:
            return _refuse(413, "too large")
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            log.warning("an upload for %s broke off: %s", tracked.state.id, exc)
            return _refuse(400, "broken off")  # nobody reads it: the sender has gone
        finally:
            self._uploading[tracked.token] -= 1
            if not self._uploading[tracked.token]:
                del self._uploading[tracked.token]
            await asyncio.to_thread(_discard_partial, partial, folder)
        return web.Response(status=201, headers={"Location": url}, text="stored\n")


def _refuse(status: int, text: str) -> web.Response:
    """A refusal after which the connection closes, so an unread body is not waited for."""
    response = web.Response(status=status, text=f"{text}\n")
    response.force_close()
    return response


def _declared_over(request: web.Request, limit: int) -> bool:
    """True if the request says its body is longer than `limit`."""
    length = request.content_length
    return length is not None and length > limit


async def _chunks(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives, refusing more than `limit` bytes."""
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLarge
        yield chunk


async def _stream_to(request: web.Request, path: Path, limit: int) -> None:
    """Write the body to a file as it arrives (the writes in a thread), within `limit`."""
    file = await asyncio.to_thread(_create, path)
    try:
        batch: list[bytes] = []
        gathered = 0
        async for chunk in _chunks(request, limit):
            batch.append(chunk)
            gathered += len(chunk)
            if gathered >= _WRITE_BATCH:
                await asyncio.to_thread(file.write, b"".join(batch))
                batch, gathered = [], 0
        if batch:
            await asyncio.to_thread(file.write, b"".join(batch))
    finally:
        await asyncio.to_thread(file.close)


def _create(path: Path) -> BinaryIO:
    """Open a new file in its folder, making the folder (again, if an ended upload took it)."""
    for _ in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return path.open("wb")
        except FileNotFoundError:
            continue  # another upload's refusal removed the empty folder in between
    return path.open("wb")


def _discard_partial(partial: Path, folder: Path) -> None:
    """Remove an upload that did not finish, and its folder if nothing else is in it."""
    partial.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # refused while not empty: another file of the prediction is there
