"""The Cog servers' callbacks on the bot's listener: webhooks, and output uploads.

Cog signs neither, so each prediction's webhook path carries its own secret token, and an
upload must name (in `X-Prediction-Id`) the server id of a prediction the bot placed, which
carries a keyed hash. Anything else, or anything for a prediction that has ended, answers 404
with nothing acted on or stored. Bodies are read in chunks against the download cap (a
`completed` webhook holds the whole `data:` URI, far above aiohttp's 1 MiB default).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import yarl
from aiohttp import web

from bot.backends.cog.pool import CogPool

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 256 * 1024


class TooLarge(Exception):
    """A body went over its limit."""


class CogCallbacks:
    """aiohttp handlers for one pool's webhooks and uploads, under COG_CALLBACK_URL's path."""

    def __init__(self, pool: CogPool, *, callback_url: str, max_bytes: int) -> None:
        self._pool = pool
        self._base = callback_url.rstrip("/")
        self._prefix = yarl.URL(self._base).path.rstrip("/")
        self._max_bytes = max_bytes
        # A data: URI is 4/3 of the file, plus the logs and the rest of the prediction.
        self._max_webhook = max_bytes * 4 // 3 + 4 * 1024 * 1024
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
        try:
            body = json.loads(await _read(request, self._max_webhook))
        except TooLarge:
            return web.Response(status=413, text="too large\n")
        except ValueError:
            return web.Response(status=400, text="not JSON\n")
        if not self._pool.take_webhook(token, body):
            return web.Response(status=404, text="unknown\n")
        return web.Response(text="taken\n")

    async def upload(self, request: web.Request) -> web.Response:
        """Store an output file for a running prediction of ours and say where it lives."""
        tracked = self._pool.upload_target(request.headers.get("X-Prediction-Id", ""))
        if tracked is None:
            return web.Response(status=404, text="unknown\n")
        name = _UNSAFE.sub("_", Path(request.match_info["name"]).name).lstrip(".")[:100]
        folder = self._pool.uploads_dir / tracked.token
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name or "output")
        try:
            await _stream_to(request, path, self._max_bytes)
        except TooLarge:
            path.unlink(missing_ok=True)
            return web.Response(status=413, text="too large\n")
        url = f"{self._base}/uploads/{tracked.token}/{path.name}"
        tracked.files[url] = path
        return web.Response(status=201, headers={"Location": url}, text="stored\n")


async def _read(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _stream_to(request: web.Request, path: Path, limit: int) -> None:
    """Write the body to a file as it arrives, refusing more than `limit` bytes."""
    size = 0
    with path.open("wb") as file:
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge
            file.write(chunk)
