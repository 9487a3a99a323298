"""Smoke tests: a real in-process discord.py bot against the fake Discord."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator

import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.fakes.discord import MANAGE_MESSAGES, FakeDiscord

GUILD_ID = 111_111_111_111_111_111
CHANNEL_ID = 222_222_222_222_222_222
USER_ID = 333_333_333_333_333_333


class SmokeButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"smoke:(?P<n>[0-9]+)"
):
    """A persistent button carrying a number in its custom_id."""

    def __init__(self, n: int) -> None:
        """Build the button for `n`."""
        super().__init__(discord.ui.Button(label=f"Go {n}", custom_id=f"smoke:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[discord.Client],
        item: discord.ui.Item[discord.ui.View],
        match: re.Match[str],
        /,
    ) -> SmokeButton:
        """Rebuild the button from its custom_id."""
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction[discord.Client]) -> None:
        """Open the modal."""
        await interaction.response.send_modal(SmokeModal(self.n))


class SmokeModal(discord.ui.Modal, title="Smoke"):
    """A modal with one labelled text input and one in a legacy action row."""

    def __init__(self, n: int) -> None:
        """Build the modal for `n`."""
        super().__init__(custom_id=f"smoke-modal:{n}")
        self.n = n
        self.note: discord.ui.TextInput[SmokeModal] = discord.ui.TextInput(custom_id="note")
        self.extra: discord.ui.TextInput[SmokeModal] = discord.ui.TextInput(
            label="Extra", custom_id="extra", required=False
        )
        self.add_item(discord.ui.Label(text="Note", component=self.note))
        self.add_item(self.extra)

    async def on_submit(self, interaction: discord.Interaction[discord.Client]) -> None:
        """Reply ephemerally with what was entered."""
        await interaction.response.send_message(
            f"got {self.note.value}/{self.extra.value} for {self.n}", ephemeral=True
        )


class SmokeBot(commands.Bot):
    """A minimal bot with /ping and /edit."""

    def __init__(self) -> None:
        """Create the bot with default intents."""
        super().__init__(command_prefix="!", intents=discord.Intents.default())
        self.errors: list[Exception] = []
        guild = discord.Object(GUILD_ID)

        @app_commands.command(name="ping", description="Ping with a number.")
        async def ping(interaction: discord.Interaction[discord.Client], n: int) -> None:
            """Defer, add a button, then post a file with an embed."""
            await interaction.response.defer()
            view = discord.ui.View(timeout=None)
            view.add_item(SmokeButton(n))
            await interaction.edit_original_response(content=f"pong {n * 2}", view=view)
            channel = interaction.channel
            assert isinstance(channel, discord.TextChannel)
            await channel.send(
                "attached",
                file=discord.File(io.BytesIO(b"hello bytes"), filename="hello.txt"),
                embed=discord.Embed(title="Smoke embed"),
                allowed_mentions=discord.AllowedMentions.none(),
            )

        @app_commands.command(name="edit", description="Send then edit a message.")
        async def edit(interaction: discord.Interaction[discord.Client]) -> None:
            """Send a channel message and try to edit it."""
            await interaction.response.send_message("working")
            channel = interaction.channel
            assert isinstance(channel, discord.TextChannel)
            message = await channel.send("draft")
            try:
                await message.edit(content="final")
            except discord.NotFound as exc:
                self.errors.append(exc)
                await interaction.followup.send(f"edit failed: {exc.code}")

        self.tree.add_command(ping, guild=guild)
        self.tree.add_command(edit, guild=guild)

    async def setup_hook(self) -> None:
        """Register the dynamic button and sync guild commands."""
        self.add_dynamic_items(SmokeButton)
        await self.tree.sync(guild=discord.Object(GUILD_ID))


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """A started fake Discord with one guild, channel and member."""
    fake = FakeDiscord()
    fake.add_guild(GUILD_ID, name="Smoke", channel_ids=[CHANNEL_ID])
    fake.add_member(GUILD_ID, USER_ID, name="tester", permissions=MANAGE_MESSAGES)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest_asyncio.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[SmokeBot]:
    """A real SmokeBot connected to the fake; restores discord.py's endpoints afterwards."""
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    bot = SmokeBot()
    runner = asyncio.create_task(bot.start(fake.token))
    ready = asyncio.create_task(fake.wait_until_ready())
    try:
        await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()
            raise AssertionError("bot stopped before becoming ready")
        ready.result()
        yield bot
    finally:
        ready.cancel()
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


@pytest.mark.asyncio
async def test_command_button_modal_round_trip(fake: FakeDiscord, bot: SmokeBot) -> None:
    """Defer, edit with a dynamic button, upload a file, open a modal and reply ephemerally."""
    assert [c["name"] for c in fake.commands[GUILD_ID]] == ["ping", "edit"]
    assert fake.ready_count == 1

    command = await fake.invoke_command(
        "ping", {"n": "21"}, guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID
    )
    assert command.data["options"] == [{"name": "n", "type": 4, "value": 21}]
    original = await fake.wait_for(lambda: command.original and command.original.components)
    assert command.deferred
    assert command.callbacks == [{"type": 5}]
    assert command.original is not None
    assert command.original.content == "pong 42"
    assert not command.ephemeral
    button = command.original.button("Go")
    assert button["custom_id"] == "smoke:21"
    assert original[0]["type"] == 1

    sent = await fake.wait_for(
        lambda: next((m for m in fake.channel_messages(CHANNEL_ID) if m.attachments), None)
    )
    assert sent.content == "attached"
    assert [(a.filename, a.data) for a in sent.attachments] == [("hello.txt", b"hello bytes")]
    assert sent.attachments[0].content_type == "text/plain"
    assert sent.embeds[0]["title"] == "Smoke embed"
    assert sent.allowed_mentions == {"parse": []}
    assert sent.author_id == fake.bot_user_id

    click = await fake.click(command.original, button["custom_id"], user_id=USER_ID)
    modal = await fake.wait_for(lambda: click.modal)
    assert modal["custom_id"] == "smoke-modal:21"
    assert modal["title"] == "Smoke"
    assert [c["type"] for c in modal["components"]] == [18, 1]

    submit = await fake.submit_modal(click, {"note": "hi", "extra": "there"})
    assert submit.data["components"][0] == {
        "type": 18,
        "component": {"type": 4, "custom_id": "note", "value": "hi"},
    }
    reply = await fake.wait_for(lambda: submit.original)
    assert reply.content == "got hi/there for 21"
    assert reply.ephemeral and submit.ephemeral
    assert reply not in fake.channel_messages(CHANNEL_ID)
    assert fake.unknown_routes == []


@pytest.mark.asyncio
async def test_fail_next_raises_not_found_in_bot(fake: FakeDiscord, bot: SmokeBot) -> None:
    """A scripted 404 Unknown Message on PATCH surfaces as discord.NotFound."""
    fake.fail_next(
        "PATCH",
        r"^/channels/\d+/messages/\d+$",
        status=404,
        body={"message": "Unknown Message", "code": 10008},
    )
    command = await fake.invoke_command(
        "edit", guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID
    )
    followup = await fake.wait_for(lambda: next(iter(command.followups), None))
    assert followup.content == "edit failed: 10008"
    assert isinstance(bot.errors[0], discord.NotFound)
    draft = next(m for m in fake.channel_messages(CHANNEL_ID) if m.content == "draft")
    assert draft.edits == []
    assert [r.status for r in fake.requests if r.method == "PATCH"] == [404]
    assert fake.unknown_routes == []


@pytest.mark.asyncio
async def test_gateway_resume_replays_missed_events(fake: FakeDiscord, bot: SmokeBot) -> None:
    """After a dropped connection the client resumes instead of identifying again."""
    await fake.disconnect_gateway()
    command = await fake.invoke_command(
        "edit", guild_id=GUILD_ID, channel_id=CHANNEL_ID, user_id=USER_ID
    )
    await fake.wait_for(lambda: fake.resume_count == 1)
    assert command.id in fake.interactions
    final = await fake.wait_for(
        lambda: next((m for m in fake.channel_messages(CHANNEL_ID) if m.content == "final"), None)
    )
    assert [e["content"] for e in final.edits] == ["final"]
    assert fake.ready_count == 1
    assert [m["op"] for m in fake.gateway_received if m["op"] in (2, 6)] == [2, 6]
    assert fake.unknown_routes == []
