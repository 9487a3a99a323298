"""Discord glue for /animate: the command, its buttons and modal, and the job reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cogs.animate.command import AnimateCog

if TYPE_CHECKING:
    from bot.app.client import AnimateBot


async def setup(bot: AnimateBot) -> None:
    """Load the cog."""
    await bot.add_cog(AnimateCog(bot))
