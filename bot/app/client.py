"""The bot class: one HTTP session, one database, the scheduler, and the extensions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from discord import app_commands
from discord.ext import commands

from bot.app.cog_setup import CogSetup
from bot.app.monitoring import Monitoring
from bot.app.settings import Settings
from bot.app.sharding import (
    IdentifyGate,
    InProcessIdentifyGate,
    SharedIdentifyGate,
    describe_shard_ids,
)
from bot.backends.replicate import PredictionClient
from bot.backends.webhooks import WebhookReceiver, WebhookVerifier
from bot.core.budgets import Budgets
from bot.core.limits import SchedulerLimits
from bot.core.scheduler import Scheduler
from bot.core.shared_scheduler import SharedScheduler
from bot.observability.discord_requests import discord_trace
from bot.observability.health import CheckResult, gateway_result
from bot.observability.metrics import BotMetrics
from bot.owner.guild_settings import GuildSettingsService
from bot.owner.quotas import Prices, Quotas
from bot.storage.base import StorageUnavailable, Store
from bot.storage.leases import SharedJobs
from bot.storage.postgres_membership import PostgresMembership

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.animate", "cogs.queue", "cogs.config", "cogs.usage", "cogs.history")
NO_MENTIONS = discord.AllowedMentions.none()
SHUTDOWN_GRACE_SECONDS = 5.0


def use_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at the configured REST base and gateway (Discord itself by default)."""
    discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def _numeric(shard_count: int | str) -> int | None:
    """A numeric SHARD_COUNT as discord.py takes it; `auto` becomes None (ask Discord)."""
    return shard_count if isinstance(shard_count, int) else None


class ExtensionsFailed(Exception):
    """Some extensions did not load; the bot must not run (or sync commands) without them."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"could not load {', '.join(names)}")
        self.names = names


class WebhookListenFailed(Exception):
    """The webhook listener could not bind its address."""


class InFlight:
    """Counts interaction handlers still running, so shutdown lets them finish first."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Mark a handler as running for the duration of the block."""
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait(self, timeout: float) -> None:
        """Wait until no handler runs, or the time-out passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)


class AnimateTree(app_commands.CommandTree["AnimateBot"]):
    """Command tree whose errors become one clear sentence for the member."""

    async def on_error(
        self, interaction: discord.Interaction[AnimateBot], error: app_commands.AppCommandError
    ) -> None:
        """Answer a failed command with a message instead of silence."""
        await interaction.client.report_error(interaction, error)


class AnimateBot(commands.AutoShardedBot):
    """The AnimateDiff bot."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession,
        store: Store,
        shared: SharedJobs | None = None,
        membership: PostgresMembership | None = None,
    ) -> None:
        # The bot never joins voice: spare operators two warnings about voice libraries.
        discord.VoiceClient.warn_nacl = False
        if hasattr(discord.VoiceClient, "warn_dave"):
            discord.VoiceClient.warn_dave = False
        # One registry per bot: two bots in one process (tests) never share a series.
        self.metrics = BotMetrics()
        # Only the guilds intent: no message content, no member list (nothing privileged).
        super().__init__(
            http_trace=discord_trace(self.metrics),
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=discord.Intents(guilds=True),
            allowed_mentions=NO_MENTIONS,
            tree_cls=AnimateTree,
            # SHARD_COUNT empty: one shard; auto (None here): Discord's recommendation.
            shard_count=1 if settings.shard_count is None else _numeric(settings.shard_count),
        )
        # SHARD_IDS empty: every shard (discord.py's None; its keyword takes only a list).
        self.shard_ids = list(settings.shard_ids) or None
        self.settings = settings
        # Several processes on one token pace their identifies through the shared store.
        self.membership = membership
        self.identify_gate: IdentifyGate = (
            InProcessIdentifyGate() if membership is None else SharedIdentifyGate(membership)
        )
        self.in_flight = InFlight()
        self.session = session
        self.store = store
        self.predictions: PredictionClient | None = None
        if settings.replicate_api_token is not None:
            self.predictions = PredictionClient(
                session,
                base_url=settings.replicate_api_base,
                token=settings.replicate_api_token.get_secret_value(),
                version=settings.replicate_model_version,
                wait_seconds=settings.prediction_wait_seconds,
                webhook_url=settings.public_webhook_url,
                webhook_events=("logs", "completed")
                if settings.webhook_progress
                else ("completed",),
                output_prefixes=settings.output_url_prefixes,
                metrics=self.metrics,
            )
        # COG_URLS: the bot's own GPUs first (Replicate, if set, as the overflow).
        self.cog = CogSetup(settings, session, self.predictions, self.metrics)
        self.guild_settings = GuildSettingsService(store, settings.guild_defaults())
        # Each job is priced by where it ran (its stored prediction id says which).
        prices = Prices(
            replicate=settings.price_per_gpu_second, own=settings.cog_price_per_gpu_second
        )
        self.quotas = Quotas(store, self.guild_settings, prices=prices)
        options: dict[str, Any] = dict(
            limits=SchedulerLimits(
                running_per_guild=settings.max_running_per_guild,
                running_total=settings.max_running_total,
                queued_per_member=settings.max_queued_per_member,
                prediction_timeout=settings.prediction_timeout_seconds,
                start_timeout=settings.prediction_start_timeout_seconds,
                max_download_bytes=settings.max_download_bytes,
                progress_poll_seconds=settings.progress_poll_seconds,
            ),
            # With several processes, each takes its share of these (see SharedDispatcher).
            budgets=Budgets.local(
                api_per_minute=settings.api_requests_per_minute,
                discord_per_second=settings.discord_requests_per_second,
            ),
            # Beside the database: one folder per bot, so a start can sweep what a crash left.
            work_root=settings.database_path.parent / "work",
            policy=self.quotas,
            metrics=self.metrics,
        )
        self.scheduler: Scheduler = (
            Scheduler(store, self.cog.backend, **options)
            if shared is None
            else SharedScheduler(
                store,
                self.cog.backend,
                shared=shared,
                shards=self._shards_here,
                reload_settings=self._reload_settings,
                defer_dispatching=True,  # until setup_hook has loaded everything
                **options,
            )
        )
        self.webhooks: WebhookReceiver | None = None
        self.cog.wire(self.scheduler)
        if settings.public_webhook_url is not None and self.predictions is not None:
            self.webhooks = WebhookReceiver(
                WebhookVerifier(self.predictions.webhook_secret),
                self.scheduler.push,
                public_url=settings.public_webhook_url,
                metrics=self.metrics,
            )
        self.commands_synced = False
        self.monitoring = Monitoring(
            settings,
            self.metrics,
            store=store,
            session=session,
            gateway=self.gateway_health,
            commands_synced=lambda: self.commands_synced,
            jobs_resumed=lambda: self.scheduler.resumed,
        )
        # The one listener of WEBHOOK_LISTEN_PORT: Replicate's webhooks, or else the Cog callbacks.
        self.monitoring.share(self.webhooks or self.cog.callbacks)
        if self.cog.pool is not None:
            self.monitoring.watch_cog(self.cog.pool.servers)

    async def setup_hook(self) -> None:
        """Load extensions (logging each failure) and sync the slash commands."""
        await self._join_shards()
        # Before the scheduler starts: resumed work obeys each server's own limits.
        await self.guild_settings.load()
        await self.monitoring.start()
        self.cog.share_listener(self.webhooks)
        if self.webhooks is not None:
            # Before any create names the webhook, so no delivery finds nobody listening.
            host, port = self.settings.webhook_listen_host, self.settings.webhook_listen_port
            try:
                await self.webhooks.start(host, port)
            except OSError as exc:
                raise WebhookListenFailed(
                    f"could not listen for webhooks on {host}:{port} ({exc.strerror or exc}); "
                    "check WEBHOOK_LISTEN_HOST and WEBHOOK_LISTEN_PORT."
                ) from None
        try:
            await self.cog.start()  # before the scheduler resumes jobs on the Cog servers
        except OSError as exc:
            raise WebhookListenFailed(
                f"could not listen for Cog callbacks on {self.settings.webhook_listen_host}:"
                f"{self.settings.webhook_listen_port} ({exc.strerror or exc}); "
                "check WEBHOOK_LISTEN_HOST and WEBHOOK_LISTEN_PORT."
            ) from None
        failed = []
        for extension in EXTENSIONS:
            try:
                await self.load_extension(extension)
            except Exception:
                log.exception("failed to load extension %s", extension)
                failed.append(extension)
        if failed:
            # Syncing now would remove the missing commands from every server.
            raise ExtensionsFailed(failed)
        await self.sync_commands()
        self.commands_synced = True
        if isinstance(self.scheduler, SharedScheduler):
            await self.scheduler.start_dispatching()

    async def _join_shards(self) -> None:
        """Learn the identify concurrency (and the count, if `auto`); lock the shards if shared."""
        shards_here = len(self.shard_ids) if self.shard_ids else self.shard_count
        if shards_here is None or shards_here > 1 or self.membership is not None:
            # One shard of one process needs no pacing: spare it the request. (A process
            # of several paces its one shard against the others' through the store.)
            recommended, _url, limits = await self.http.get_bot_gateway()
            self.identify_gate.learn_max_concurrency(int(limits["max_concurrency"]))
            if self.shard_count is None:
                # Set here, so the configured gateway (DISCORD_GATEWAY_URL) stays in use.
                self.shard_count = recommended
        if self.membership is not None:
            # Before any job starts: refused (ShardsTaken) if another live process runs one.
            count, ids = self._shards_here()
            await self.membership.take_shards(count, ids)
            await self.membership.beat()

    async def launch_shards(self) -> None:
        """Connect the shards (`_join_shards` learned how many)."""
        log.info("connecting %s", describe_shard_ids(tuple(self.shard_ids or ()), self.shard_count))
        await super().launch_shards()

    def _shards_here(self) -> tuple[int, tuple[int, ...]]:
        """The shard count and the shards this process runs (all of them if SHARD_IDS is empty)."""
        count = self.shard_count or 1
        return count, tuple(self.shard_ids or range(count))

    async def _reload_settings(self, _guild_id: int | None) -> None:
        """Read every server's settings again (another process changed one)."""
        await self.guild_settings.load()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Wait for this shard's turn to identify (Discord: one per bucket per 5 seconds)."""
        await self.identify_gate.wait_turn(shard_id or 0)

    async def sync_commands(self) -> None:
        """Sync to the configured guilds (instant) or globally (may take up to an hour)."""
        guild_ids = self.settings.discord_guild_ids
        if not guild_ids:
            synced = await self.tree.sync()
            log.info("synced %d global commands", len(synced))
            return
        for guild_id in guild_ids:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            try:
                synced = await self.tree.sync(guild=guild)
            except discord.HTTPException as exc:
                log.error("could not sync commands to guild %s: %s", guild_id, exc.text)
                continue
            log.info("synced %d commands to guild %s", len(synced), guild_id)

    async def close(self) -> None:
        """Let interaction handlers finish, then unload the cogs (stopping the scheduler)."""
        await self.in_flight.wait(timeout=SHUTDOWN_GRACE_SECONDS)
        await super().close()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.cog.stop()
        await self.monitoring.stop()

    async def gateway_health(self) -> CheckResult:
        """Well if every shard this process runs holds an open gateway connection."""
        expected = self.shard_ids or (range(self.shard_count) if self.shard_count else None)
        connected = [shard_id for shard_id, shard in self.shards.items() if not shard.is_closed()]
        return gateway_result(None if self.is_closed() else expected, connected)

    async def on_ready(self) -> None:
        """Log who we are once connected."""
        assert self.user is not None
        log.info("connected as %s (%s) in %d servers", self.user, self.user.id, len(self.guilds))

    async def report_error(self, interaction: discord.Interaction, error: Exception) -> None:
        """Turn any error from a command or component into one sentence for the member."""
        original = getattr(error, "original", error)
        if isinstance(error, app_commands.NoPrivateMessage):
            text = "This command works only in a server."
        elif isinstance(error, app_commands.MissingPermissions):
            names = " and ".join(
                name.replace("_", " ").replace("guild", "server").title()
                for name in error.missing_permissions
            )
            text = f"You need the {names} permission to do that."
        elif isinstance(error, app_commands.CheckFailure):
            text = "You are not allowed to do that here."
        elif isinstance(error, app_commands.CommandOnCooldown):
            text = f"Slow down: try again in {error.retry_after:.0f} seconds."
        elif isinstance(original, StorageUnavailable):
            # Nothing was stored, so nothing waits: the member asks again once it answers.
            log.warning("interaction refused: %s", original)
            text = "The bot's database is not answering right now; try again in a minute."
        else:
            log.error("interaction failed", exc_info=original)
            text = "Something went wrong on the bot's side; please try again."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            else:
                await interaction.response.send_message(
                    text, ephemeral=True, allowed_mentions=NO_MENTIONS
                )
        except discord.HTTPException:
            log.warning("could not tell the member about an error", exc_info=True)
