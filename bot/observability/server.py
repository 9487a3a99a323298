"""`/metrics`, `/healthz` and `/readyz` over HTTP: on a listener of their own or beside webhooks."""

from __future__ import annotations

import logging

from aiohttp import web

from bot.observability.health import HealthReport, summary
from bot.observability.metrics import BotMetrics

log = logging.getLogger(__name__)


class MonitoringEndpoints:
    """The three routes, mountable on any aiohttp application."""

    def __init__(self, metrics: BotMetrics, health: HealthReport, ready: HealthReport) -> None:
        self._metrics = metrics
        self._health = health
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the port listened on, once started alone

    def install(self, app: web.Application) -> None:
        """Add the routes to an application (the webhook listener's, when they share a port)."""
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port with an application of their own (port 0: any free port)."""
        app = web.Application()
        self.install(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        log.info("serving /metrics, /healthz and /readyz on %s:%s", host, self.port)

    async def stop(self) -> None:
        """Stop listening (when started alone)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, _request: web.Request) -> web.Response:
        """Every metric in the Prometheus text format."""
        body, content_type = self._metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def healthz(self, _request: web.Request) -> web.Response:
        """200 if the gateway, the database and the backend are well; else 503 and why."""
        return await self._answer(self._health)

    async def readyz(self, _request: web.Request) -> web.Response:
        """200 once commands are synced and resumed jobs are picked up; else 503."""
        return await self._answer(self._ready)

    @staticmethod
    async def _answer(report: HealthReport) -> web.Response:
        """Run a report's checks and answer with their summary."""
        ok, body = summary(await report.results())
        return web.json_response(body, status=200 if ok else 503)
