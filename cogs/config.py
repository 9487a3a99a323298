"""Discord glue for /animate-config: a server's settings, and bans from the bot."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.owner.guild_settings import ChannelExists
from bot.owner.setting_specs import LIST_SETTINGS, RESETTABLE, SETTINGS, InvalidSetting
from bot.texts.formatting import CONTENT_LIMIT, quote
from bot.texts.owner import settings_text

if TYPE_CHECKING:
    from bot.app.client import AnimateBot

NO_MENTIONS = discord.AllowedMentions.none()
BANNED_REASON = "Canceled: the requester was banned from using the bot in this server."

SETTING_CHOICES = [
    app_commands.Choice(name=f"{spec.label} ({name})", value=name)
    for name, spec in SETTINGS.items()
]
RESET_CHOICES = [
    *SETTING_CHOICES,
    *(
        app_commands.Choice(name=f"{label} ({name})", value=name)
        for name, label in LIST_SETTINGS.items()
    ),
]
assert len(RESET_CHOICES) == len(RESETTABLE)  # every resettable setting is offered


def channel_checker(guild: discord.Guild | None) -> ChannelExists | None:
    """Tell which of a server's channels still exist; None while the server is not known.

    An unavailable server's cached channels may be stale, so nothing is judged gone then.
    """
    if guild is None or guild.unavailable:
        return None
    return lambda channel_id: guild.get_channel(channel_id) is not None


def _ban_text(member_id: int, *, banned: bool, canceled: int, running: int) -> str:
    """Tell the moderator what a ban did, including to the member's waiting requests."""
    who = f"<@{member_id}>"
    text = (
        f"Banned {who} from the bot in this server"
        if banned
        else f"{who} was already banned from the bot here"
    )
    if canceled == 1:
        text += "; their queued request was canceled."
    elif canceled:
        text += f"; their {canceled} queued requests were canceled."
    elif banned:
        text += "; they had no queued requests."
    else:
        text += "."
    if running:
        text += (
            " Their request already running will still finish."
            if running == 1
            else f" Their {running} requests already running will still finish."
        )
    return text


async def _moderates_server(interaction: discord.Interaction) -> bool:
    """Manage Messages across the server, not just in this channel, may ban and unban."""
    member = interaction.user
    if isinstance(member, discord.Member) and member.guild_permissions.manage_messages:
        return True
    raise app_commands.MissingPermissions(["manage_messages"])


# Discord shows the whole command only to members with Manage Server (its default permission;
# the owner can change who sees it in Server Settings > Integrations). Each subcommand checks
# the permission again when it runs, since that default is only a hint to the client.
@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ConfigCog(
    commands.GroupCog,
    name="Config",
    group_name="animate-config",
    group_description="Show and change how the animation bot works in this server.",
):
    """The /animate-config command group."""

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot
        self.settings = bot.guild_settings
        super().__init__()

    async def _reply(self, interaction: discord.Interaction, text: str) -> None:
        """Answer privately, pinging nobody."""
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def _changed(self, interaction: discord.Interaction, guild_id: int, done: str) -> None:
        """Confirm a change, with the settings as they now are."""
        self.bot.scheduler.limits_changed(guild_id)
        shown = self._show(guild_id, limit=CONTENT_LIMIT - len(done) - 2)
        await self._reply(interaction, f"{done}\n\n{shown}")

    def _show(self, guild_id: int, limit: int = CONTENT_LIMIT) -> str:
        """The server's effective settings."""
        changed = [name for name in RESETTABLE if self.settings.is_changed(guild_id, name)]
        settings = self.settings.get(guild_id)
        exists = channel_checker(self.bot.get_guild(guild_id))
        deleted = () if exists is None else [c for c in settings.channel_ids if not exists(c)]
        return settings_text(settings, changed, limit=limit, deleted_channels=deleted)

    # The allowed-channel list may name only text, forum and voice channels, never threads,
    # so a thread's deletion cannot touch it and needs no listener.
    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        """Take a deleted channel off the server's lists (Discord's CHANNEL_DELETE)."""
        async with self.bot.in_flight.track():
            await self.settings.forget_channel(channel.guild.id, channel.id)

    @staticmethod
    def _guild(interaction: discord.Interaction) -> int:
        """The server the command was used in."""
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage
        return interaction.guild_id

    @app_commands.command(name="show", description="Show this server's animation settings.")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def show(self, interaction: discord.Interaction) -> None:
        """Show the effective settings."""
        async with self.bot.in_flight.track():
            await self._reply(interaction, self._show(self._guild(interaction)))

    @app_commands.command(name="set", description="Change one of this server's settings.")
    @app_commands.describe(setting="What to change", value="The new value")
    @app_commands.choices(setting=SETTING_CHOICES)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def set_(
        self,
        interaction: discord.Interaction,
        setting: app_commands.Choice[str],
        value: app_commands.Range[str, 1, 1000],
    ) -> None:
        """Validate and store a new value."""
        async with self.bot.in_flight.track():
            guild_id = self._guild(interaction)
            try:
                await self.settings.set(guild_id, setting.value, value, by=interaction.user.id)
            except InvalidSetting as exc:
                await self._reply(interaction, str(exc))
                return
            await self._changed(interaction, guild_id, f"Changed `{setting.value}`.")

    @app_commands.command(name="reset", description="Put one setting back to the bot's default.")
    @app_commands.describe(setting="What to reset (lists become empty)")
    @app_commands.choices(setting=RESET_CHOICES)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def reset(
        self, interaction: discord.Interaction, setting: app_commands.Choice[str]
    ) -> None:
        """Forget the server's own value of a setting."""
        async with self.bot.in_flight.track():
            guild_id = self._guild(interaction)
            await self.settings.reset(guild_id, setting.value)
            await self._changed(interaction, guild_id, f"`{setting.value}` is back to its default.")

    @app_commands.command(
        name="channel-add", description="Allow /animate in a channel (then only in listed ones)."
    )
    @app_commands.describe(channel="The channel to allow")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def channel_add(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel | discord.ForumChannel | discord.VoiceChannel,
    ) -> None:
        """Add a channel to the list where /animate may be used."""
        await self._channel(interaction, channel.id, add=True)

    @app_commands.command(
        name="channel-remove", description="Stop allowing /animate in a listed channel."
    )
    @app_commands.describe(channel="The channel to take off the list")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def channel_remove(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel | discord.ForumChannel | discord.VoiceChannel,
    ) -> None:
        """Remove a channel from the list."""
        await self._channel(interaction, channel.id, add=False)

    async def _channel(
        self, interaction: discord.Interaction, channel_id: int, *, add: bool
    ) -> None:
        """Change the channel list."""
        async with self.bot.in_flight.track():
            guild_id = self._guild(interaction)
            change = self.settings.add_channel if add else self.settings.remove_channel
            try:
                await change(guild_id, channel_id, by=interaction.user.id)
            except InvalidSetting as exc:
                await self._reply(interaction, str(exc))
                return
            done = f"{'Added' if add else 'Removed'} <#{channel_id}>."
            await self._changed(interaction, guild_id, done)

    @app_commands.command(
        name="block", description="Refuse prompts with a word or pattern (* matches letters)."
    )
    @app_commands.describe(pattern="A word or phrase; * stands for any letters, as in nud*")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def block(
        self, interaction: discord.Interaction, pattern: app_commands.Range[str, 1, 100]
    ) -> None:
        """Add a blocked pattern."""
        await self._pattern(interaction, pattern, add=True)

    @app_commands.command(name="unblock", description="Stop refusing a blocked word or pattern.")
    @app_commands.describe(pattern="The pattern, as listed by /animate-config show")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def unblock(
        self, interaction: discord.Interaction, pattern: app_commands.Range[str, 1, 100]
    ) -> None:
        """Remove a blocked pattern."""
        await self._pattern(interaction, pattern, add=False)

    async def _pattern(self, interaction: discord.Interaction, pattern: str, *, add: bool) -> None:
        """Change the blocked list."""
        async with self.bot.in_flight.track():
            guild_id = self._guild(interaction)
            change = self.settings.block if add else self.settings.unblock
            try:
                await change(guild_id, pattern, by=interaction.user.id)
            except InvalidSetting as exc:
                await self._reply(interaction, str(exc))
                return
            done = f"{'Blocked' if add else 'Unblocked'} {quote(pattern, 100)}."
            await self._changed(interaction, guild_id, done)

    # Moderation: Manage Messages, checked here, since the group's default is Manage Server.
    @app_commands.command(name="ban", description="Stop a member from using the bot here.")
    @app_commands.describe(member="Who may no longer make animations in this server")
    @app_commands.check(_moderates_server)
    async def ban(self, interaction: discord.Interaction, member: discord.User) -> None:
        """Ban a member from the bot in this server."""
        async with self.bot.in_flight.track():
            guild_id = self._guild(interaction)
            if member.id == interaction.user.id:
                await self._reply(interaction, "You cannot ban yourself.")
                return
            if member.bot:
                await self._reply(interaction, "Bots cannot use /animate anyway.")
                return
            # Editing each canceled request's message can take longer than Discord's 3 s.
            await interaction.response.defer(ephemeral=True, thinking=True)
            banned = await self.bot.store.ban(guild_id, member.id, banned_by=interaction.user.id)
            # After the ban is stored, so no new request slips in; one running still finishes.
            scheduler = self.bot.scheduler
            canceled = await scheduler.cancel_queued_for(guild_id, member.id, BANNED_REASON)
            text = _ban_text(
                member.id,
                banned=banned,
                canceled=canceled,
                running=scheduler.pending_for(guild_id, member.id),
            )
            await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="unban", description="Let a banned member use the bot again.")
    @app_commands.describe(member="Who may make animations again")
    @app_commands.check(_moderates_server)
    async def unban(self, interaction: discord.Interaction, member: discord.User) -> None:
        """Lift a ban."""
        async with self.bot.in_flight.track():
            guild_id = self._guild(interaction)
            if member.id == interaction.user.id:
                await self._reply(interaction, "You cannot lift your own ban.")
                return
            lifted = await self.bot.store.unban(guild_id, member.id)
            await self._reply(
                interaction,
                f"<@{member.id}> may make animations in this server again."
                if lifted
                else f"<@{member.id}> was not banned from the bot here.",
            )


async def setup(bot: AnimateBot) -> None:
    """Load the cog."""
    await bot.add_cog(ConfigCog(bot))
