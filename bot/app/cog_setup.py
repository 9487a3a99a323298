"""Which backend the bot runs: Replicate, a pool of Cog servers, or the pool with overflow.

With COG_URLS the pool runs every job it can; with a Replicate token as well, Replicate takes
the jobs that would wait longer than OVERFLOW_AFTER_SECONDS for a GPU (and serves the jobs of
before). The pool's callbacks share the Replicate webhook listener when there is one, or get
one of their own at WEBHOOK_LISTEN_HOST and WEBHOOK_LISTEN_PORT.
"""

from __future__ import annotations

import logging

import aiohttp

from bot.app.settings import Settings
from bot.backends.base import Backend
from bot.backends.cog.callbacks import CogCallbacks
from bot.backends.cog.config import unreachable_callbacks
from bot.backends.cog.ids import derive_secret
from bot.backends.cog.pool import CogPool
from bot.backends.cog.routing import RoutingBackend
from bot.backends.replicate import PredictionClient
from bot.backends.webhooks import WebhookReceiver
from bot.core.scheduler import Scheduler
from bot.observability.metrics import BotMetrics

log = logging.getLogger(__name__)


class CogSetup:
    """The pool (if any), its callbacks, and the backend the scheduler is given."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        replicate: PredictionClient | None,
        metrics: BotMetrics | None = None,
    ) -> None:
        self.pool: CogPool | None = None
        self.callbacks: CogCallbacks | None = None
        self._shared = False
        self._settings = settings
        if not settings.cog_urls:
            assert replicate is not None  # the settings require one backend or the other
            self.backend: Backend = replicate
            return
        self.pool = CogPool(
            session,
            settings.cog_urls,
            secret=derive_secret(settings.discord_token.get_secret_value()),
            callback_url=settings.cog_callback_url,
            uploads_dir=settings.database_path.parent / "cog-uploads",
            health_interval=settings.cog_health_check_seconds,
            hold_timeout=settings.prediction_timeout_seconds + 60,
            max_bytes=settings.max_download_bytes,
            metrics=metrics,
        )
        if settings.cog_callback_url is not None:
            far = unreachable_callbacks(settings.cog_callback_url, settings.cog_urls)
            if far:
                log.warning(
                    "COG_CALLBACK_URL %s is this machine's loopback address, which the Cog "
                    "server(s) %s on other machines cannot reach: give an address they can",
                    settings.cog_callback_url,
                    ", ".join(far),
                )
            self.callbacks = CogCallbacks(
                self.pool,
                callback_url=settings.cog_callback_url,
                max_bytes=settings.max_download_bytes,
            )
        self.backend = self.pool
        if replicate is not None:
            self.backend = RoutingBackend(
                self.pool, replicate, overflow_after=settings.overflow_after_seconds
            )

    def wire(self, scheduler: Scheduler) -> None:
        """Hand the pool's news to the scheduler: new states, and servers that freed."""
        if self.pool is not None:
            self.pool.on_push = scheduler.push
            self.pool.on_capacity = scheduler.capacity_changed

    def share_listener(self, webhooks: WebhookReceiver | None) -> None:
        """Put the callbacks on the Replicate webhook listener (before it starts)."""
        if self.callbacks is not None and webhooks is not None:
            webhooks.app.add_routes(self.callbacks.routes())
            self._shared = True

    async def start(self) -> None:
        """Listen for callbacks (unless shared; OSError if it cannot), then check the servers."""
        if self.callbacks is not None and not self._shared:
            host, port = self._settings.webhook_listen_host, self._settings.webhook_listen_port
            await self.callbacks.start(host, port)
        if self.pool is not None:
            await self.pool.start()

    async def stop(self) -> None:
        """Stop checking the servers and listening."""
        if self.pool is not None:
            await self.pool.stop()
        if self.callbacks is not None:
            await self.callbacks.stop()
