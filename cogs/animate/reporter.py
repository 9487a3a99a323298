"""The reporter: turns what the core says about jobs into Discord messages (JobReporter)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import discord

from bot.core.jobs import Job
from bot.core.reporter import DeliveryFailed, JobResult, JobStatusUpdate
from bot.media import DEFAULT_UPLOAD_LIMIT
from bot.texts.cards import result_card, result_footer_prefix
from bot.texts.member import (
    canceled_text,
    dm_delivery_text,
    done_text,
    failed_text,
    status_text,
    too_large_text,
)
from cogs.animate.buttons import pending_view, result_view

if TYPE_CHECKING:
    from bot.app.client import AnimateBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
EMBED_COLOUR = 0x5865F2
READY_WAIT_SECONDS = 30
FIND_POST_LIMIT = 500  # messages read back when looking for a result posted before a crash
# Discord honours an interaction token for 15 minutes; a minute less leaves room for clocks.
INTERACTION_TOKEN_USABLE_SECONDS = 14 * 60
# Tries of that edit when Discord cannot be reached, before posting a message of its own.
TOKEN_EDIT_ATTEMPTS = 3
# Discord's name for an interaction's first response; discord.py puts the id into the path as
# given, and its Webhook methods, typed for numeric ids, have no other way to name it.
ORIGINAL_RESPONSE = cast("int", "@original")


class DiscordReporter:
    """The JobReporter the scheduler speaks through: status edits, results, failures."""

    def __init__(self, bot: AnimateBot) -> None:
        self.bot = bot

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
        for attempt in range(1, TOKEN_EDIT_ATTEMPTS + 1):
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
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                # The edit may have landed with its answer lost: the same edit again is
                # harmless, where a message of its own could stand beside it.
                log.info("job %s: editing the request's response failed: %r", job.id, exc)
                if attempt < TOKEN_EDIT_ATTEMPTS:
                    await asyncio.sleep(attempt)
                continue
            return message.id
        return None

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
                if message.author.id == me.id and is_result_of(message, job):
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


def is_result_of(message: discord.Message, job: Job) -> bool:
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
