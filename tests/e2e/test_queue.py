"""End to end: /animate-queue shows this server's queue, privately, with estimates."""

from __future__ import annotations

import asyncio

from tests.e2e.conftest import ALICE, BOB, CAROL, CHANNEL_A, CHANNEL_B, GUILD_A, GUILD_B, World
from tests.fakes.discord import FakeInteraction
from tests.fakes.predictions import Behaviour

EPHEMERAL = 64


async def _queue(world: World, user: int, guild: int = GUILD_A) -> str:
    """Run /animate-queue and return its private reply."""
    interaction: FakeInteraction = await world.discord.invoke_command(
        "animate-queue",
        {},
        guild_id=guild,
        channel_id=CHANNEL_A if guild == GUILD_A else CHANNEL_B,
        user_id=user,
    )
    await world.discord.wait_for(lambda: interaction.callbacks)
    callback = interaction.callbacks[0]
    assert callback["type"] == 4  # answered at once, with the message
    data = callback["data"]
    assert int(data.get("flags") or 0) & EPHEMERAL and interaction.ephemeral
    assert data["allowed_mentions"] == {"parse": []}  # owners are named, never pinged
    return str(data["content"])


async def test_the_queue_shows_running_and_waiting_requests_with_estimates(world: World) -> None:
    for guild in (GUILD_A, GUILD_B):
        names = [c["name"] for c in world.discord.commands[guild]]
        assert "animate-queue" in names  # synced with /animate
        command = next(c for c in world.discord.commands[guild] if c["name"] == "animate-queue")
        assert not command.get("options")

    # Nothing yet: a friendly sentence.
    assert "Nothing is waiting or running in this server" in await _queue(world, ALICE)

    # One finished run gives the bot a measured history for 5-step requests.
    await world.result_for(await world.request_message(await world.animate("warm-up", steps=5)))

    hold = asyncio.Event()
    world.api.behaviour_for = lambda _data: Behaviour(hold=hold)
    running = await world.request_message(await world.animate("a *lighthouse*", steps=5))
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    await world.request_message(await world.animate("bob's fox", user=BOB, steps=5))
    await world.request_message(await world.animate("alice again", steps=5))

    text = await _queue(world, BOB)
    lines = text.split("\n")
    assert lines[0] == "🎬 **This server's queue**: 1 running, 2 waiting"
    assert lines[1].startswith(f"▶️ <@{ALICE}> · a \\*lighthouse\\* · ")
    assert lines[2].startswith(f"`#1` <@{BOB}> · bob's fox · waiting · ready <t:")
    assert lines[2].endswith(":R> **← you**")
    assert lines[3].startswith(f"`#2` <@{ALICE}> · alice again · waiting · ready <t:")
    assert "← you" not in lines[1] + lines[3]
    # The estimates are the ones on the requests' own messages.
    assert "ready <t:" in running.content
    assert f"<@{BOB}>" in text and "**← you**" not in (await _queue(world, CAROL))

    # Another server's queue is its own.
    assert "Nothing is waiting or running" in await _queue(world, ALICE, guild=GUILD_B)
    hold.set()
    await world.discord.wait_for(lambda: len(world.results()) == 4, timeout=30)
