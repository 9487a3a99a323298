"""A protocol-level fake of one Cog server (PyPI `cog` 0.23.1's HTTP API) for callback tests.

It answers health checks READY, serves the stand-in model's schema, and takes each create
(`PUT /predictions/{id}`) with the status set in `create_status`, keeping the body so a test
can act as the server afterwards: POST its webhook, PUT its upload. The real server runs in
most tests (tests/cog_servers.py); this one answers what the real one cannot be made to.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.local_server import LocalServer

__all__ = ["FakeCogServer"]

SCHEMA = Path(__file__).resolve().parents[1] / "cog_model" / ".cog" / "openapi_schema.json"


class FakeCogServer(LocalServer):
    """One fake Cog server; `creates` holds each create's JSON body as received."""

    def __init__(self) -> None:
        super().__init__()
        self.create_status = 202  # what a create is answered
        self.creates: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.health_padding = 0  # bytes of filler in each health check's answer
        self._started = datetime.now(UTC).isoformat()

    async def start(self) -> None:
        """Serve the health check, the schema, creates and cancels."""
        app = web.Application()
        app.router.add_get("/health-check", self._health)
        app.router.add_get("/openapi.json", self._schema)
        app.router.add_put("/predictions/{id}", self._create)
        app.router.add_post("/predictions/{id}/cancel", self._cancel)
        await self.start_app(app)

    async def _health(self, _request: web.Request) -> web.Response:
        """READY (BUSY while a create of ours is taken), set up when it started."""
        status = "BUSY" if self.creates else "READY"
        body = {"status": status, "setup": {"started_at": self._started}}
        if self.health_padding:
            body["padding"] = "x" * self.health_padding
        return web.json_response(body)

    async def _schema(self, _request: web.Request) -> web.Response:
        """The stand-in model's OpenAPI schema."""
        return web.json_response(json.loads(SCHEMA.read_text()))

    async def _create(self, request: web.Request) -> web.Response:
        """Take a create (or answer it `create_status`)."""
        body = await request.json()
        if self.create_status != 202:
            headers = {"Location": "/elsewhere"} if 300 <= self.create_status < 400 else None
            return web.json_response(
                {"detail": "Not Found"}, status=self.create_status, headers=headers
            )
        self.creates.append(body)
        return web.json_response({**body, "status": "starting"}, status=202)

    async def _cancel(self, request: web.Request) -> web.Response:
        """Note a cancel."""
        self.cancels.append(request.match_info["id"])
        return web.json_response({"id": request.match_info["id"], "status": "canceled"})
