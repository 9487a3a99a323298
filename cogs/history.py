"""Discord glue for /animate-history: a member's own requests, page by page, to run again."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Self

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.jobs import Job
from bot.texts.owner import history_text
from cogs.animate.buttons import JobButton, bot_of
from cogs.animate.command import AnimateCog

if TYPE_CHECKING:
    from bot.app.client import AnimateBot

NO_MENTIONS = discord.AllowedMentions.none()
PAGE_SIZE = 5  # one row of Run again buttons


class PageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"animate:history:(?P<user>[0-9]{1,20}):(?P<way>[on])(?P<job>[0-9]{1,19})",
):
    """Newer or Older: the page of the history next to a job, for the member it belongs to."""

    def __init__(self, user_id: int, way: str, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Older" if way == "o" else "Newer",
                emoji="▶️" if way == "o" else "◀️",
                style=discord.ButtonStyle.secondary,
                custom_id=f"animate:history:{user_id}:{way}{job_id}",
            )
        )
        self.user_id, self.way, self.job_id = user_id, way, job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        """Rebuild the button from a pressed custom_id."""
        return cls(int(match["user"]), match["way"], int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Show the next page in place."""
        bot = bot_of(interaction)
        async with bot.in_flight.track():
            try:
                await self._turn(bot, interaction)
            except Exception as exc:
                await bot.report_error(interaction, exc)

    async def _turn(self, bot: AnimateBot, interaction: discord.Interaction) -> None:
        """Load the page and replace the message with it."""
        if interaction.user.id != self.user_id or interaction.guild_id is None:
            await interaction.response.send_message(
                "This list belongs to someone else: use `/animate-history` for your own.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        if self.way == "o":
            jobs = await bot.store.history(
                interaction.guild_id, self.user_id, before_id=self.job_id, limit=PAGE_SIZE
            )
        else:
            jobs = await bot.store.history(
                interaction.guild_id, self.user_id, after_id=self.job_id, limit=PAGE_SIZE
            )
        text, view = await page(bot, interaction.guild_id, self.user_id, jobs)
        await interaction.response.edit_message(
            content=text, view=view, allowed_mentions=NO_MENTIONS
        )


class RunAgainButton(JobButton, template=r"animate:again:(?P<job>[0-9]+)"):
    """Queue a request from the history again, seed and all."""

    ACTION, LABEL, EMOJI, STYLE = "again", "Run again", "🔁", discord.ButtonStyle.primary

    async def handle(self, cog: AnimateCog, interaction: discord.Interaction) -> None:
        """Queue the same request, for the member who made it only."""
        job = await cog.job_for(interaction, self.job_id)
        if job is None:
            return
        if job.deleted or job.requester_id != interaction.user.id:
            await interaction.response.send_message(
                "That request no longer exists."
                if job.deleted
                else "Only the person who made it can run it again from the history.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        await cog.queue_request(interaction, job.request, parent_job_id=job.id)


async def page(
    bot: AnimateBot, guild_id: int, user_id: int, jobs: list[Job]
) -> tuple[str, discord.ui.View]:
    """The text and buttons of one page of a member's history."""
    view = discord.ui.View(timeout=None)
    for number, job in enumerate(jobs, start=1):
        view.add_item(RunAgainButton(job.id, f"Run again {number}"))
    if jobs:
        newer = await bot.store.history(guild_id, user_id, after_id=jobs[0].id, limit=1)
        older = await bot.store.history(guild_id, user_id, before_id=jobs[-1].id, limit=1)
        if newer:
            view.add_item(PageButton(user_id, "n", jobs[0].id))
        if older:
            view.add_item(PageButton(user_id, "o", jobs[-1].id))
    return history_text(jobs), view


class HistoryCog(commands.Cog, name="History"):
    """The /animate-history command and its buttons."""

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        """Register the buttons, so they work after a restart."""
        self.bot.add_dynamic_items(PageButton, RunAgainButton)

    async def cog_unload(self) -> None:
        """Forget the buttons."""
        self.bot.remove_dynamic_items(PageButton, RunAgainButton)

    @app_commands.command(
        name="animate-history", description="Your recent animations here, to run again."
    )
    @app_commands.guild_only()
    async def animate_history(self, interaction: discord.Interaction) -> None:
        """Show the caller's newest requests in this server, privately."""
        async with self.bot.in_flight.track():
            guild_id = interaction.guild_id
            if guild_id is None:
                raise app_commands.NoPrivateMessage
            user_id = interaction.user.id
            jobs = await self.bot.store.history(guild_id, user_id, limit=PAGE_SIZE)
            text, view = await page(self.bot, guild_id, user_id, jobs)
            await interaction.response.send_message(
                text, view=view, ephemeral=True, allowed_mentions=NO_MENTIONS
            )


async def setup(bot: AnimateBot) -> None:
    """Load the cog."""
    await bot.add_cog(HistoryCog(bot))
