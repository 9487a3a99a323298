"""Discord glue for /animate-queue: this server's queue, for the member who asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.texts.member import queue_text

if TYPE_CHECKING:
    from bot.app.client import AnimateBot

NO_MENTIONS = discord.AllowedMentions.none()


class QueueCog(commands.Cog, name="Queue"):
    """The /animate-queue command."""

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot
        self.scheduler = bot.scheduler

    @app_commands.command(
        name="animate-queue", description="Show this server's animations: running and waiting."
    )
    @app_commands.guild_only()
    async def animate_queue(self, interaction: discord.Interaction) -> None:
        """Show the server's queue to the caller only."""
        async with self.bot.in_flight.track():
            guild_id = interaction.guild_id
            if guild_id is None:
                raise app_commands.NoPrivateMessage
            # Mentions name the owners without pinging them: allowed_mentions is none.
            await interaction.response.send_message(
                queue_text(self.scheduler.snapshot(guild_id), interaction.user.id),
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )


async def setup(bot: AnimateBot) -> None:
    """Load the cog."""
    await bot.add_cog(QueueCog(bot))
