"""The monitoring listener: `/metrics`, `/healthz`, `/readyz`, with the bot's own checks."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import aiohttp

from bot.app.settings import Settings
from bot.backends.cog.callbacks import CogCallbacks
from bot.backends.cog.ids import server_of
from bot.backends.cog.servers import CogServer
from bot.backends.replicate_check import check_token
from bot.backends.webhooks import WebhookReceiver
from bot.core.redaction import redact
from bot.observability.health import Check, CheckResult, HealthReport
from bot.observability.metrics import DEFAULT_BACKEND, BotMetrics
from bot.observability.server import MonitoringEndpoints
from bot.storage.base import Store
from bot.storage.sqlite import SQLiteStore

log = logging.getLogger(__name__)


class MetricsListenFailed(Exception):
    """The monitoring listener could not bind its address."""


class Monitoring:
    """Builds the health and readiness checks and serves them with the metrics."""

    def __init__(
        self,
        settings: Settings,
        metrics: BotMetrics,
        *,
        store: Store,
        session: aiohttp.ClientSession,
        gateway: Check,
        commands_synced: Callable[[], bool],
        jobs_resumed: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._store = store
        self._session = session
        self.health = HealthReport(
            {"gateway": gateway, "database": self._database, "backend": self._replicate},
            mask=redact,
        )
        # Readiness only reads flags: nothing to cache.
        self.ready = HealthReport(
            {
                "commands": _flag(commands_synced, "synced", "not synced yet"),
                "jobs": _flag(jobs_resumed, "stored jobs picked up", "not picked up yet"),
            },
            cache_seconds=0,
        )
        self.endpoints = MonitoringEndpoints(metrics, self.health, self.ready)
        self._shared = False

    @property
    def enabled(self) -> bool:
        """True if the operator set METRICS_LISTEN_PORT."""
        return self._settings.metrics_listen_port is not None

    def share(self, webhooks: WebhookReceiver | CogCallbacks | None) -> None:
        """Serve on the webhook listener if both use one port (call before it starts)."""
        port = self._settings.metrics_listen_port
        if webhooks is not None and port is not None and port == self._settings.webhook_listen_port:
            self.endpoints.install(webhooks.app)
            self._shared = True

    def watch_cog(self, servers: Sequence[CogServer]) -> None:
        """Label figures by Cog server, show each one's outage, and check the pool's health."""
        label_by_cog_server(self._metrics, servers)

        async def pool() -> CheckResult:
            """Well while at least one server can take predictions."""
            states = ", ".join(f"{s.name} {s.health}" for s in servers)
            return CheckResult(any(s.usable for s in servers), states)

        self.health.add("cog", pool)

    async def start(self) -> None:
        """Listen on METRICS_LISTEN_HOST:METRICS_LISTEN_PORT, unless off or shared."""
        port = self._settings.metrics_listen_port
        if port is None or self._shared:
            return
        host = self._settings.metrics_listen_host
        try:
            await self.endpoints.start(host, port)
        except OSError as exc:
            raise MetricsListenFailed(
                f"could not listen for metrics on {host}:{port} ({exc.strerror or exc}); "
                "check METRICS_LISTEN_HOST and METRICS_LISTEN_PORT."
            ) from None

    async def stop(self) -> None:
        """Stop the listener of its own, if any."""
        await self.endpoints.stop()

    async def _database(self) -> CheckResult:
        """Write inside a rolled-back transaction; for SQLite, also check the files' mode."""
        await self._store.probe_write()
        if isinstance(self._store, SQLiteStore):
            # A rolled-back write touches no file, so a read-only file or disk passes it.
            path = self._settings.database_path
            for file in (path, path.with_name(path.name + "-wal")):
                if file.exists() and not os.access(file, os.W_OK):
                    return CheckResult(False, f"{file.name} is not writable")
        return CheckResult(True, "reachable and writable")

    async def _replicate(self) -> CheckResult:
        """Ask the prediction API whether it answers and takes the token."""
        if self._settings.replicate_api_token is None:
            return CheckResult(True, "not used: only the Cog servers (COG_URLS) run predictions")
        probe = await check_token(
            self._session,
            base=self._settings.replicate_api_base,
            token=self._settings.replicate_api_token.get_secret_value(),
        )
        return CheckResult(probe.ok, "answers" if probe.ok else redact(probe.detail))


def _flag(value: Callable[[], bool], yes: str, no: str) -> Check:
    """A check that reads a flag."""

    async def check() -> CheckResult:
        """Report the flag."""
        return CheckResult(True, yes) if value() else CheckResult(False, no)

    return check


def label_by_cog_server(metrics: BotMetrics, servers: Sequence[CogServer]) -> None:
    """Give a job's figures the name of the Cog server it ran on; export each one's outage."""
    metrics.resolve_backend = lambda prediction_id: server_of(prediction_id) or DEFAULT_BACKEND
    for server in servers:
        metrics.watch_backend(server.name, lambda s=server: not s.usable)
