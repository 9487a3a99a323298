"""The /animate buttons (their state in the custom_id, so they outlive a restart) and the modal."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import discord

from bot.core.jobs import MAX_PROMPT_LENGTH, OUTPUT_FORMATS, InvalidRequest, Job

if TYPE_CHECKING:
    from bot.app.client import AnimateBot
    from cogs.animate.command import AnimateCog

NO_MENTIONS = discord.AllowedMentions.none()
# The cog's name (AnimateCog's `name=`): buttons look the cog up by it when pressed, so this
# module need not import the cog's, which imports this one.
COG_NAME = "Animate"


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
        cog = bot.get_cog(COG_NAME)
        async with bot.in_flight.track():
            try:
                if cog is None:
                    raise RuntimeError("the animate cog is not loaded")
                await self.handle(cast("AnimateCog", cog), interaction)
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
