"""The bot class: one HTTP session, one database, the scheduler, and the extensions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from discord import app_commands
from discord.ext import commands

from bot.app.settings import Settings
from bot.backends.replicate import PredictionClient
from bot.backends.webhooks import WebhookReceiver, WebhookVerifier
from bot.core.limits import SchedulerLimits
from bot.core.scheduler import Scheduler
from bot.owner.guild_settings import GuildSettingsService
from bot.owner.quotas import Quotas
from bot.storage.base import Store

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.animate", "cogs.queue", "cogs.config", "cogs.usage", "cogs.history")
NO_MENTIONS = discord.AllowedMentions.none()
SHUTDOWN_GRACE_SECONDS = 5.0


def use_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at the configured REST base and gateway (Discord itself by default)."""
    discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


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


class AnimateBot(commands.Bot):
    """The AnimateDiff bot."""

    def __init__(self, settings: Settings, *, session: aiohttp.ClientSession, store: Store) -> None:
        # The bot never joins voice: spare operators two warnings about voice libraries.
        discord.VoiceClient.warn_nacl = False
        if hasattr(discord.VoiceClient, "warn_dave"):
            discord.VoiceClient.warn_dave = False
        # Only the guilds intent: no message content, no member list (nothing privileged).
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=discord.Intents(guilds=True),
            allowed_mentions=NO_MENTIONS,
            tree_cls=AnimateTree,
        )
        self.settings = settings
        self.in_flight = InFlight()
        self.session = session
        self.store = store
        self.predictions = PredictionClient(
            session,
            base_url=settings.replicate_api_base,
            token=settings.replicate_api_token.get_secret_value(),
            version=settings.replicate_model_version,
            wait_seconds=settings.prediction_wait_seconds,
            webhook_url=settings.public_webhook_url,
            webhook_events=("logs", "completed") if settings.webhook_progress else ("completed",),
            output_prefixes=settings.output_url_prefixes,
        )
        self.guild_settings = GuildSettingsService(store, settings.guild_defaults())
        self.quotas = Quotas(
            store, self.guild_settings, price_per_second=settings.price_per_gpu_second
        )
        self.scheduler = Scheduler(
            store,
            self.predictions,
            limits=SchedulerLimits(
                running_per_guild=settings.max_running_per_guild,
                running_total=settings.max_running_total,
                queued_per_member=settings.max_queued_per_member,
                prediction_timeout=settings.prediction_timeout_seconds,
                start_timeout=settings.prediction_start_timeout_seconds,
                max_download_bytes=settings.max_download_bytes,
            ),
            # Beside the database: one folder per bot, so a start can sweep what a crash left.
            work_root=settings.database_path.parent / "work",
            policy=self.quotas,
        )
        self.webhooks: WebhookReceiver | None = None
        if settings.public_webhook_url is not None:
            self.webhooks = WebhookReceiver(
                WebhookVerifier(self.predictions.webhook_secret),
                self.scheduler.push,
                public_url=settings.public_webhook_url,
            )

    async def setup_hook(self) -> None:
        """Load extensions (logging each failure) and sync the slash commands."""
        # Before the scheduler starts: resumed work obeys each server's own limits.
        await self.guild_settings.load()
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
