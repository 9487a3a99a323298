"""The /animate command, and what its buttons do when pressed."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.crashpoints import crash_point
from bot.core.jobs import (
    CHECKPOINTS,
    MAX_PROMPT_LENGTH,
    MAX_SEED,
    MOTION_MODULES,
    OUTPUT_FORMATS,
    GenerationRequest,
    InvalidRequest,
    Job,
)
from bot.core.limits import QueueFull
from bot.core.reporter import CancelOutcome, JobStatusUpdate, Stage
from bot.owner.guild_settings import GuildSettings
from bot.texts.cards import settings_json
from bot.texts.formatting import DESCRIPTION_LIMIT
from bot.texts.member import status_text
from cogs.animate.buttons import BUTTONS, COG_NAME, RemixModal, pending_view
from cogs.animate.reporter import EMBED_COLOUR, DiscordReporter, is_result_of
from cogs.config import channel_checker

if TYPE_CHECKING:
    from bot.app.client import AnimateBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()

MODEL_CHOICES = [app_commands.Choice(name=name, value=path) for path, name in CHECKPOINTS.items()]
MOTION_CHOICES = [
    app_commands.Choice(name=name, value=module) for module, name in MOTION_MODULES.items()
]
FORMAT_CHOICES = [app_commands.Choice(name=name, value=fmt) for fmt, name in OUTPUT_FORMATS.items()]


class AnimateCog(commands.Cog, name=COG_NAME):
    """The /animate command and the life of its messages."""

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot
        self.scheduler = bot.scheduler
        self.store = bot.store
        self.reporter = DiscordReporter(bot)

    async def cog_load(self) -> None:
        """Register the buttons and start (or resume) the work."""
        self.bot.add_dynamic_items(*BUTTONS)
        self.scheduler.attach(self.reporter)
        await self.scheduler.start()

    async def cog_unload(self) -> None:
        """Stop the work; every job stays recorded and resumes on the next start."""
        await self.scheduler.stop()
        self.bot.remove_dynamic_items(*BUTTONS)

    @app_commands.command(name="animate", description="Generate a short animation from a prompt.")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What the animation shows",
        negative_prompt="What to keep out of it",
        model="The image model (style)",
        motion_module="The motion model",
        steps="Sampling steps: more is slower and finer (default 25)",
        guidance_scale="How closely to follow the prompt (default 7.5)",
        seed="Seed for reproducible results (0 or empty: a random one)",
        output_format="MP4 video (default) or a looping GIF",
    )
    @app_commands.rename(output_format="format")
    @app_commands.choices(
        model=MODEL_CHOICES, motion_module=MOTION_CHOICES, output_format=FORMAT_CHOICES
    )
    async def animate(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_LENGTH] | None = None,
        model: app_commands.Choice[str] | None = None,
        motion_module: app_commands.Choice[str] | None = None,
        steps: app_commands.Range[int, 1, 100] | None = None,
        guidance_scale: app_commands.Range[float, 1.0, 10.0] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        output_format: app_commands.Choice[str] | None = None,
    ) -> None:
        """Queue an animation for this server."""
        async with self.bot.in_flight.track():
            # Options left out take the server's defaults, which its owner may have changed.
            defaults = self._settings(interaction)
            try:
                request = GenerationRequest.create(
                    prompt,
                    negative_prompt=negative_prompt,
                    model=model.value if model else defaults.model,
                    motion_module=motion_module.value if motion_module else defaults.motion_module,
                    steps=defaults.steps if steps is None else steps,
                    guidance_scale=defaults.guidance_scale
                    if guidance_scale is None
                    else guidance_scale,
                    seed=seed,
                    output_format=output_format.value if output_format else None,
                )
            except InvalidRequest as exc:
                await interaction.response.send_message(
                    str(exc), ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                return
            await self.queue_request(interaction, request)

    def _settings(self, interaction: discord.Interaction) -> GuildSettings:
        """The settings of the server an interaction comes from."""
        service = self.bot.guild_settings
        guild_id = interaction.guild_id
        return service.get(guild_id) if guild_id is not None else service.defaults

    @staticmethod
    def _refusal(
        interaction: discord.Interaction, settings: GuildSettings, request: GenerationRequest
    ) -> str | None:
        """Ask the server's settings whether they allow this request where it was made."""
        channel = interaction.channel
        parent_id = getattr(channel, "parent_id", None)
        is_nsfw = getattr(channel, "is_nsfw", None)
        return settings.refusal(
            channel_ids=[c for c in (interaction.channel_id, parent_id) if c is not None],
            age_restricted=callable(is_nsfw) and bool(is_nsfw()),
            prompt=request.prompt,
            channel_exists=channel_checker(interaction.guild),  # deleted ones do not count
        )

    async def queue_request(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        parent_job_id: int | None = None,
    ) -> None:
        """Acknowledge, queue the request, and show its place in the queue."""
        guild_id, channel_id = interaction.guild_id, interaction.channel_id
        if guild_id is None or channel_id is None:
            await interaction.response.send_message(
                "Animations can be made only in a server channel.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        settings = self.bot.guild_settings.get(guild_id)
        refusal = self._refusal(interaction, settings, request)
        if refusal is None:
            try:
                request = settings.apply(request)
            except InvalidRequest as exc:
                refusal = str(exc)
        if refusal is not None:
            await interaction.response.send_message(
                refusal, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        # Stored before anything is shown: once Discord says "thinking", the job exists,
        # so a crash from here on cannot lose the request.
        try:
            job, position = await self.scheduler.submit(
                guild_id=guild_id,
                channel_id=channel_id,
                requester_id=interaction.user.id,
                request=request,
                parent_job_id=parent_job_id,
                upload_limit=interaction.filesize_limit,
                # Kept until the message id is stored: a restart edits this response with it.
                interaction_token=interaction.token,
            )
        except QueueFull as exc:
            await interaction.response.send_message(
                str(exc), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        crash_point("accepted")
        shown = self.scheduler.queued_status(job.id) or JobStatusUpdate(
            Stage.QUEUED, position=position
        )
        message_id: int | None = None
        try:
            await interaction.response.defer(thinking=True)
            crash_point("acknowledged")
            message = await interaction.edit_original_response(
                content=status_text(job, shown),
                view=pending_view(job.id),
                allowed_mentions=NO_MENTIONS,
            )
            message_id = message.id
        except discord.HTTPException as exc:
            # The job is accepted and stored: it posts a status message of its own instead.
            log.warning("job %s: could not show the request: %s", job.id, exc)
        finally:
            await self.scheduler.attach_message(job.id, message_id, shown=shown)
        if message_id is not None:
            await self._tell_remaining(interaction, guild_id)

    async def _tell_remaining(self, interaction: discord.Interaction, guild_id: int) -> None:
        """Tell the member, privately, how many requests they have left today."""
        remaining = await self.bot.quotas.remaining_today(guild_id, interaction.user.id)
        if remaining is None:
            return
        plural = "request" if remaining == 1 else "requests"
        try:
            await interaction.followup.send(
                f"You have {remaining} {plural} left today in this server "
                "(the count starts again at midnight UTC).",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:
            log.warning("could not tell a member their remaining requests: %s", exc)

    # Buttons ----------------------------------------------------------------------------

    async def job_for(self, interaction: discord.Interaction, job_id: int) -> Job | None:
        """Load the job a button names, refusing ids from another server or that do not exist."""
        job = await self.store.get(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            await interaction.response.send_message(
                "That request no longer exists.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return None
        return job

    @staticmethod
    def _may_manage(interaction: discord.Interaction, job: Job) -> bool:
        """The requester and members with Manage Messages may cancel or delete."""
        return interaction.user.id == job.requester_id or interaction.permissions.manage_messages

    async def cancel_pressed(self, interaction: discord.Interaction, job_id: int) -> None:
        """Cancel a pending job."""
        job = await self.job_for(interaction, job_id)
        if job is None:
            return
        if not self._may_manage(interaction, job):
            await interaction.response.send_message(
                "Only the person who asked for this animation, or a moderator with Manage "
                "Messages, can cancel it.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        # Canceling edits the request's message first, which may be slow: acknowledge now.
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcome = await self.scheduler.cancel(job.id)
        reply = {
            CancelOutcome.CANCELED: "Canceled: it was removed from the queue.",
            CancelOutcome.CANCELING: "Stopping it: the animation service was asked to cancel.",
            CancelOutcome.TOO_LATE: "Too late to cancel: it has already finished.",
        }[outcome]
        await interaction.edit_original_response(content=reply, allowed_mentions=NO_MENTIONS)

    async def reroll_pressed(self, interaction: discord.Interaction, job_id: int) -> None:
        """Queue the same settings with a new seed, for whoever pressed."""
        job = await self.job_for(interaction, job_id)
        if job is None:
            return
        await self.queue_request(interaction, job.request.with_new_seed(), parent_job_id=job.id)

    async def remix_pressed(self, interaction: discord.Interaction, job_id: int) -> None:
        """Open the remix modal, prefilled from the job."""
        job = await self.job_for(interaction, job_id)
        if job is None:
            return
        await interaction.response.send_modal(RemixModal(self, job))

    async def info_pressed(self, interaction: discord.Interaction, job_id: int) -> None:
        """Show every setting of a job as JSON, to the presser only."""
        job = await self.job_for(interaction, job_id)
        if job is None:
            return
        text = settings_json(job)
        if len(text) <= DESCRIPTION_LIMIT:
            await interaction.response.send_message(
                embed=discord.Embed(title="Settings", description=text, colour=EMBED_COLOUR),
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        # Two long prompts can outgrow an embed: send the JSON as a file instead.
        await interaction.response.send_message(
            file=discord.File(
                io.BytesIO(settings_json(job, fenced=False).encode()),
                filename=f"animate-{job.seed}-settings.json",
            ),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    async def delete_pressed(self, interaction: discord.Interaction, job_id: int) -> None:
        """Delete a result if the presser asked for it or moderates messages."""
        job = await self.job_for(interaction, job_id)
        if job is None:
            return
        message = interaction.message
        if message is None or not is_result_of(message, job):
            # A custom_id forged onto another message must not delete that message.
            await interaction.response.send_message(
                "That button does not belong to this animation.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        if not self._may_manage(interaction, job):
            await interaction.response.send_message(
                "Only the person who asked for this animation, or a moderator with Manage "
                "Messages, can delete it.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        await interaction.response.send_message(
            "Deleted the animation.", ephemeral=True, allowed_mentions=NO_MENTIONS
        )
        with contextlib.suppress(discord.NotFound):
            await message.delete()
        await self.store.mark_deleted(job.id)
