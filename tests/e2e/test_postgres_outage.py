"""The real bot on PostgreSQL while the database goes away and comes back.

The bot reaches its schema through a TCP relay that the test cuts (every connection drops,
new ones are refused, as when the server restarts) and restores.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, World
from tests.e2e.harness import BotProcess, bot_environment
from tests.e2e.test_postgres import PostgresWorld
from tests.fakes.discord import FakeDiscord, FakeInteraction
from tests.fakes.predictions import Behaviour, FakePredictionAPI
from tests.postgres_server import Relay, fresh_schema

EPHEMERAL = 1 << 6


class RelayedWorld(PostgresWorld):
    """A running bot whose PostgreSQL is behind a relay the test cuts."""

    relay: Relay


@pytest.fixture
async def relayed_world(tmp_path: Path) -> AsyncIterator[RelayedWorld]:
    """Fakes on 127.0.0.1 and the real bot on a fresh schema, reached through a relay."""
    async with fresh_schema() as url:
        relay, relayed_url = await Relay.to(url)
        discord, api = FakeDiscord(), FakePredictionAPI()
        await discord.start()
        await api.start()
        discord.add_guild(GUILD_A, name="guild", channel_ids=[CHANNEL_A])
        discord.add_member(GUILD_A, ALICE, name="alice")
        discord.add_member(GUILD_A, BOB, name="bob")
        env = bot_environment(
            discord,
            api,
            tmp_path / "state" / "bot.sqlite3",
            guild_ids=(GUILD_A,),
            extra={"DATABASE_URL": relayed_url},
        )
        world = RelayedWorld(discord, api, BotProcess(env, tmp_path))
        world.database_url, world.relay = url, relay
        await world.bot.start()
        try:
            await discord.wait_until_ready(timeout=30)
            yield world
        finally:
            code = await world.bot.stop() if world.bot.process is not None else 0
            await relay.cut()
            await api.close()
            await discord.close()
        log = world.bot.log()
        assert code == 0 and "Traceback" not in log, f"exit {code}\n{log}"


async def _private_reply(world: World, interaction: FakeInteraction) -> str:
    """The one private sentence an interaction was answered with."""
    await world.discord.wait_for(lambda: interaction.callbacks)
    data = interaction.callbacks[0].get("data") or {}
    assert int(data.get("flags") or 0) & EPHEMERAL
    return str(data["content"])


async def test_a_job_waits_out_the_database_with_a_note_and_is_delivered_once(
    relayed_world: RelayedWorld,
) -> None:
    world = relayed_world
    gate = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=gate))
    request = await world.request_message(await world.animate("while the database sleeps"))
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    await world.relay.cut()
    gate.set()  # the prediction ends (paid for) while the bot cannot store it
    await world.discord.wait_for(
        lambda: "database is not answering" in (request.content or ""), timeout=20
    )
    # A new request is refused with a sentence, and nothing of it is kept.
    refused = await _private_reply(world, await world.animate("during the outage", user=BOB))
    assert refused == "The bot's database is not answering right now; try again in a minute."
    await world.relay.start()
    result = await world.result_for(request)
    done = await world.row_reaches(1, status="done")
    assert done["result_message_id"] == result.id
    assert world.api.creates == 1 and len(world.results()) == 1
    assert "database is not answering" not in (request.content or "")
    log = world.bot.log()
    assert "the database is not answering" in log and "the database is back" in log
