"""Discord glue for /animate: the command, its buttons and modal, and the job reports."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

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
from bot.core.reporter import CancelOutcome, DeliveryFailed, JobResult, JobStatusUpdate, Stage
from bot.media import DEFAULT_UPLOAD_LIMIT
from bot.owner.guild_settings import GuildSettings
from bot.texts.member import (
    DESCRIPTION_LIMIT,
    canceled_text,
    dm_delivery_text,
    done_text,
    failed_text,
    result_card,
    result_footer_prefix,
    settings_json,
    status_text,
    too_large_text,
)
from cogs.config import channel_checker

if TYPE_CHECKING:
    from bot.app.client import AnimateBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
EMBED_COLOUR = 0x5865F2
READY_WAIT_SECONDS = 30
FIND_POST_LIMIT = 500  # messages read back when looking for a result posted before a crash
# Discord honours an interaction token for 15 minutes; a minute less leaves room for clocks.
INTERACTION_TOKEN_USABLE_SECONDS = 14 * 60
# Discord's name for an interaction's first response; discord.py puts the id into the path as
# given, and its Webhook methods, typed for numeric ids, have no other way to name it.
ORIGINAL_RESPONSE = cast("int", "@original")

MODEL_CHOICES = [app_commands.Choice(name=name, value=path) for path, name in CHECKPOINTS.items()]
MOTION_CHOICES = [
    app_commands.Choice(name=name, value=module) for module, name in MOTION_MODULES.items()
]
FORMAT_CHOICES = [app_commands.Choice(name=name, value=fmt) for fmt, name in OUTPUT_FORMATS.items()]


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"animate:x:(?P<job>[0-9]+)"
):
    """A button that names its job in the custom_id, so it works after a restart."""

    ACTION: ClassVar[str] = "x"
    LABEL: ClassVar[str] = ""
    EMOJI: ClassVar[str] = ""
    STYLE: ClassVar[discord.ButtonStyle] = discord.ButtonStyle.secondary

    def __init__(self, job_id: int, label: str | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or self.LABEL,
                emoji=self.EMOJI or None,
                style=self.STYLE,
                custom_id=f"animate:{self.ACTION}:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        """Rebuild the button from a pressed custom_id."""
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Hand the press to the cog, turning any error into a message."""
        bot = bot_of(interaction)
        cog = bot.get_cog(AnimateCog.__cog_name__)
        async with bot.in_flight.track():
            try:
                if not isinstance(cog, AnimateCog):
                    raise RuntimeError("the animate cog is not loaded")
                await self.handle(cog, interaction)
            except Exception as exc:
                await bot.report_error(interaction, exc)

    async def handle(self, cog: AnimateCog, interaction: discord.Interaction) -> None:
        """React to a press."""
        raise NotImplementedError


class CancelButton(JobButton, template=r"animate:cancel:(?P<job>[0-9]+)"):
    """Stop a request that is queued or running."""

    ACTION, LABEL, EMOJI, STYLE = "cancel", "Cancel", "✖️", discord.ButtonStyle.danger

    async def handle(self, cog: AnimateCog, interaction: discord.Interaction) -> None:
        """Cancel the job if the presser may."""
        await cog.cancel_pressed(interaction, self.job_id)


class RerollButton(JobButton, template=r"animate:reroll:(?P<job>[0-9]+)"):
    """Same settings, new seed."""

    ACTION, LABEL, EMOJI, STYLE = "reroll", "Reroll", "🎲", discord.ButtonStyle.primary

    async def handle(self, cog: AnimateCog, interaction: discord.Interaction) -> None:
        """Queue a reroll for the presser."""
        await cog.reroll_pressed(interaction, self.job_id)


class RemixButton(JobButton, template=r"animate:remix:(?P<job>[0-9]+)"):
    """Edit the settings in a modal and queue the result."""

    ACTION, LABEL, EMOJI, STYLE = "remix", "Remix", "🎛️", discord.ButtonStyle.secondary

    async def handle(self, cog: AnimateCog, interaction: discord.Interaction) -> None:
        """Open the remix modal."""
        await cog.remix_pressed(interaction, self.job_id)


class InfoButton(JobButton, template=r"animate:info:(?P<job>[0-9]+)"):
    """Every setting of a result as JSON, for the presser only."""

    ACTION, LABEL, EMOJI, STYLE = "info", "Info", "ℹ️", discord.ButtonStyle.secondary

    async def handle(self, cog: AnimateCog, interaction: discord.Interaction) -> None:
        """Show the job's full settings."""
        await cog.info_pressed(interaction, self.job_id)


class DeleteButton(JobButton, template=r"animate:delete:(?P<job>[0-9]+)"):
    """Remove a result (requester or Manage Messages)."""

    ACTION, LABEL, EMOJI, STYLE = "delete", "Delete", "🗑️", discord.ButtonStyle.secondary

    async def handle(self, cog: AnimateCog, interaction: discord.Interaction) -> None:
        """Delete the result if the presser may."""
        await cog.delete_pressed(interaction, self.job_id)


BUTTONS = (CancelButton, RerollButton, RemixButton, DeleteButton, InfoButton)


def bot_of(interaction: discord.Interaction) -> AnimateBot:
    """The bot that received an interaction, typed as ours."""
    return cast("AnimateBot", interaction.client)


def pending_view(job_id: int) -> discord.ui.View:
    """Buttons under a request that is still waiting or running."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: int) -> discord.ui.View:
    """Buttons under a posted result."""
    view = discord.ui.View(timeout=None)
    for button in (
        RerollButton(job_id),
        RemixButton(job_id),
        DeleteButton(job_id),
        InfoButton(job_id),
    ):
        view.add_item(button)
    return view


class RemixModal(discord.ui.Modal, title="Remix animation"):
    """Edit a result's prompt and settings; the seed stays unless changed."""

    def __init__(self, cog: AnimateCog, job: Job) -> None:
        super().__init__(custom_id=f"animate:remix-modal:{job.id}", timeout=900)
        self.cog = cog
        self.job = job
        request = job.request
        self.prompt = discord.ui.TextInput[Self](
            label="Prompt",
            style=discord.TextStyle.paragraph,
            default=request.prompt,
            max_length=MAX_PROMPT_LENGTH,
            custom_id="prompt",
        )
        self.negative_prompt = discord.ui.TextInput[Self](
            label="Negative prompt",
            style=discord.TextStyle.paragraph,
            default=request.negative_prompt,
            required=False,
            max_length=MAX_PROMPT_LENGTH,
            custom_id="negative_prompt",
        )
        # A modal holds five rows: steps and guidance share one to leave room for the format.
        self.steps_and_guidance = discord.ui.TextInput[Self](
            label="Steps (1-100), guidance scale (1-10)",
            default=f"{request.steps}, {request.guidance_scale:g}",
            max_length=12,
            custom_id="steps_and_guidance",
        )
        self.seed = discord.ui.TextInput[Self](
            label="Seed (0 or empty for a new one)",
            default=str(request.seed),
            required=False,
            max_length=10,
            custom_id="seed",
        )
        self.output_format = discord.ui.Select[Self](
            custom_id="format",
            required=False,
            options=[
                discord.SelectOption(label=name, value=fmt, default=fmt == request.output_format)
                for fmt, name in OUTPUT_FORMATS.items()
            ],
        )
        for item in (self.prompt, self.negative_prompt, self.steps_and_guidance, self.seed):
            self.add_item(item)
        self.add_item(discord.ui.Label[Self](text="Format", component=self.output_format))

    async def on_submit(self, interaction: discord.Interaction, /) -> None:
        """Queue the edited request, or explain what is wrong with it."""
        async with bot_of(interaction).in_flight.track():
            await self._submit(interaction)

    async def _submit(self, interaction: discord.Interaction) -> None:
        """Validate the modal's values and queue them."""
        try:
            request = self.job.request.remixed(
                prompt=self.prompt.value,
                negative_prompt=self.negative_prompt.value,
                steps_and_guidance=self.steps_and_guidance.value,
                seed=self.seed.value,
                output_format=next(iter(self.output_format.values), None),
            )
        except InvalidRequest as exc:
            await interaction.response.send_message(
                str(exc), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        await self.cog.queue_request(interaction, request, parent_job_id=self.job.id)

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        """Send modal errors through the central handler."""
        await bot_of(interaction).report_error(interaction, error)


class AnimateCog(commands.Cog, name="Animate"):
    """The /animate command and the life of its messages."""

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot
        self.scheduler = bot.scheduler
        self.store = bot.store

    async def cog_load(self) -> None:
        """Register the buttons and start (or resume) the work."""
        self.bot.add_dynamic_items(*BUTTONS)
        self.scheduler.attach(self)
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
        if message is None or not _is_result_of(message, job):
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

    # JobReporter ------------------------------------------------------------------------

    def _message(self, job: Job, message_id: int) -> discord.PartialMessage:
        """A handle on a message in the job's channel, cached or not."""
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        return channel.get_partial_message(message_id)

    async def _edit_status(self, job: Job, content: str, view: discord.ui.View | None) -> bool:
        """Edit the request's message; a message that is gone is not an error."""
        if job.request_message_id is None:
            return False
        try:
            await self._message(job, job.request_message_id).edit(
                content=content, view=view, allowed_mentions=NO_MENTIONS
            )
        except (discord.NotFound, discord.Forbidden) as exc:
            log.info("status message of job %s cannot be edited: %s", job.id, exc)
            return False
        return True

    async def show_status(self, job: Job, update: JobStatusUpdate) -> None:
        """Show where a pending job stands."""
        await self._edit_status(job, status_text(job, update), pending_view(job.id))

    async def deliver(self, job: Job, result: JobResult) -> int:
        """Post the result as a reply to the request; by DM if the channel refuses it."""
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        extra: dict[str, Any] = {}
        if job.request_message_id is not None:
            extra["reference"] = discord.MessageReference(
                message_id=job.request_message_id,
                channel_id=job.channel_id,
                guild_id=job.guild_id,
                fail_if_not_exists=False,
            )
        content = (
            f"🎬 Animation for <@{job.requester_id}>"
            if result.file is not None
            else too_large_text(job, result.output_size, result.upload_limit)
        )
        try:
            message = await channel.send(
                content=content,
                embed=_embed(job, result),
                view=result_view(job.id),
                allowed_mentions=NO_MENTIONS,
                **_attachment(result, result.upload_limit, spoiler=self._spoiler(job)),
                **extra,
            )
        except (discord.Forbidden, discord.NotFound) as exc:
            channel_gone = isinstance(exc, discord.NotFound)
            log.warning("job %s: channel %s refused the result: %s", job.id, job.channel_id, exc)
            message = await self._deliver_by_dm(job, result, channel_gone=channel_gone)
            if message is None:
                raise DeliveryFailed(
                    "The animation is ready, but its channel is gone and the requester does "
                    "not accept direct messages."
                    if channel_gone
                    else "The animation is ready, but the bot may not post it in this channel "
                    "(it needs Send Messages, Embed Links, Attach Files and Read Message "
                    "History), and the requester does not accept direct messages."
                ) from exc
            await self._quietly_report_done(job, by_dm=True)
            return message.id
        await self._quietly_report_done(job)
        return message.id

    def _spoiler(self, job: Job) -> bool:
        """True if the job's server wants results hidden behind a spoiler."""
        return self.bot.guild_settings.get(job.guild_id).spoilers

    async def _deliver_by_dm(
        self, job: Job, result: JobResult, *, channel_gone: bool
    ) -> discord.Message | None:
        """Send the result to the requester directly; None if they do not accept it."""
        # Buttons stay off: they act on the server the result was made for.
        dm_limit = DEFAULT_UPLOAD_LIMIT  # DMs have no server boosts
        try:
            dm = await self.bot.create_dm(discord.Object(job.requester_id))
            return await dm.send(
                content=dm_delivery_text(
                    job, channel_gone=channel_gone, attached=bool(_attachment(result, dm_limit))
                ),
                embed=_embed(job, result),
                allowed_mentions=NO_MENTIONS,
                **_attachment(result, dm_limit, spoiler=self._spoiler(job)),
            )
        except discord.HTTPException as exc:
            log.warning("job %s: could not send the result by DM either: %s", job.id, exc)
            return None

    async def _quietly_report_done(self, job: Job, *, by_dm: bool = False) -> None:
        """Mark the request done; the result is out, so a failed edit only gets logged."""
        try:
            await self._edit_status(job, done_text(job, by_dm=by_dm), None)
        except discord.HTTPException:
            log.warning("could not mark job %s done on its status message", job.id, exc_info=True)

    async def announce(self, job: Job, update: JobStatusUpdate) -> int | None:
        """Show a status message for a job whose own was never recorded; return its id.

        The interaction's response (Discord's "thinking…") becomes it while the stored token
        lasts, so no second message appears beside it; otherwise a new message is posted.
        """
        message_id = await self._edit_original_response(job, update)
        if message_id is not None:
            return message_id
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            message = await channel.send(
                status_text(job, update), view=pending_view(job.id), allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as exc:
            log.warning("job %s: could not post a status message: %s", job.id, exc)
            return None
        return message.id

    async def _edit_original_response(self, job: Job, update: JobStatusUpdate) -> int | None:
        """Edit the job's interaction response into its status message; None if it cannot."""
        token, application_id = job.interaction_token, self.bot.application_id
        if token is None or application_id is None:
            return None
        if time.time() - job.created_at >= INTERACTION_TOKEN_USABLE_SECONDS:
            return None  # expired, or about to: Discord would refuse it
        # The token is the credential; the bot's client gives the webhook its state and HTTP.
        webhook = discord.Webhook.partial(application_id, token, client=self.bot)
        try:
            message = await webhook.edit_message(
                ORIGINAL_RESPONSE,
                content=status_text(job, update),
                view=pending_view(job.id),
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:
            # Never acknowledged (killed before the defer: Unknown Webhook), or gone.
            log.info("job %s: could not edit the request's response: %s", job.id, exc)
            return None
        return message.id

    async def report_done(self, job: Job) -> None:
        """Show on the request's message that the result is posted."""
        await self._edit_status(job, done_text(job), None)

    async def find_delivered(self, job: Job) -> int | None:
        """Look for our own result message for this job in its channel, then in the DM."""
        for channel in (
            self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id),
            await self._dm_channel(job),
        ):
            if channel is not None and (found := await self._find_post(channel, job)):
                return found
        return None

    async def _dm_channel(self, job: Job) -> discord.DMChannel | None:
        """The requester's DM channel, where a result goes when its channel refused it."""
        try:
            return await self.bot.create_dm(discord.Object(job.requester_id))
        except discord.HTTPException as exc:
            log.warning("job %s: could not open the requester's DMs: %s", job.id, exc)
            return None

    async def _find_post(self, channel: discord.abc.Messageable, job: Job) -> int | None:
        """Search a channel, newest first back to the job's creation, for its result."""
        me = self.bot.user
        if me is None:
            return None
        created = discord.utils.time_snowflake(datetime.fromtimestamp(job.created_at, tz=UTC))
        try:
            async for message in channel.history(limit=FIND_POST_LIMIT):
                if message.id < created:
                    break  # older than the job itself
                if message.author.id == me.id and _is_result_of(message, job):
                    return message.id
        except discord.HTTPException as exc:
            log.warning("could not search for job %s's result: %s", job.id, exc)
        return None

    async def guild_upload_limit(self, job: Job) -> int | None:
        """The server's upload limit; right after a restart, wait briefly for it to load."""
        guild = self.bot.get_guild(job.guild_id)
        if guild is None and not self.bot.is_ready():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bot.wait_until_ready(), timeout=READY_WAIT_SECONDS)
            guild = self.bot.get_guild(job.guild_id)
        return guild.filesize_limit if guild is not None else None

    async def report_failure(self, job: Job, reason: str) -> None:
        """Show the failure on the request's message, or post it if that message is gone."""
        if await self._edit_status(job, failed_text(job, reason), None):
            return
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            await channel.send(failed_text(job, reason), allowed_mentions=NO_MENTIONS)
        except (discord.NotFound, discord.Forbidden) as exc:
            # The failure is recorded; there is just nowhere left to show it.
            log.info("job %s: could not post its failure in its channel: %s", job.id, exc)

    async def report_canceled(self, job: Job) -> None:
        """Show the cancellation on the request's message."""
        await self._edit_status(job, canceled_text(job), None)


def _is_result_of(message: discord.Message, job: Job) -> bool:
    """True if the message is this job's posted result (its footer names the job)."""
    footer = result_footer_prefix(job)
    return any((embed.footer.text or "").startswith(footer) for embed in message.embeds)


def _attachment(result: JobResult, limit: int, *, spoiler: bool = False) -> dict[str, Any]:
    """The result's file as a send() argument, or nothing when there is none within `limit`."""
    upload = result.file
    if upload is None or upload.size_bytes > limit:
        return {}
    return {"file": discord.File(upload.path, filename=upload.filename, spoiler=spoiler)}


def _embed(job: Job, result: JobResult) -> discord.Embed:
    """Turn the result card into an embed."""
    card = result_card(job, result)
    embed = discord.Embed(title=card.title, description=card.description, colour=EMBED_COLOUR)
    for field in card.fields:
        embed.add_field(name=field.name, value=field.value, inline=field.inline)
    embed.set_footer(text=card.footer)
    return embed


async def setup(bot: AnimateBot) -> None:
    """Load the cog."""
    await bot.add_cog(AnimateCog(bot))
