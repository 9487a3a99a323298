"""Discord glue for /animate-usage: what the bot cost this server, per day and per member."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.owner.quotas import USAGE_DAYS
from bot.owner.usage_chart import usage_chart
from bot.texts.owner import usage_text

if TYPE_CHECKING:
    from bot.app.client import AnimateBot

NO_MENTIONS = discord.AllowedMentions.none()
EMBED_COLOUR = 0x5865F2
CHART_NAME = "animate-usage.png"


class UsageCog(commands.Cog, name="Usage"):
    """The /animate-usage command."""

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="animate-usage",
        description=f"GPU time and estimated cost of this server's animations ({USAGE_DAYS} days).",
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def animate_usage(self, interaction: discord.Interaction) -> None:
        """Show the server's spending to the caller only."""
        async with self.bot.in_flight.track():
            guild_id = interaction.guild_id
            if guild_id is None:
                raise app_commands.NoPrivateMessage
            report = await self.bot.quotas.usage(guild_id)
            embed = discord.Embed(
                title=f"Animation usage in this server, last {USAGE_DAYS} days",
                description=usage_text(report),
                colour=EMBED_COLOUR,
            )
            chart = await usage_chart(report)  # in a thread; None before any usage
            files: list[discord.File] = []
            if chart is not None:
                files.append(discord.File(io.BytesIO(chart), filename=CHART_NAME))
                embed.set_image(url=f"attachment://{CHART_NAME}")
            await interaction.response.send_message(
                embed=embed, files=files, ephemeral=True, allowed_mentions=NO_MENTIONS
            )


async def setup(bot: AnimateBot) -> None:
    """Load the cog."""
    await bot.add_cog(UsageCog(bot))
