"""The fake Discord's shards: each guild's events on its shard's sessions, DMs on shard 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.fakes.discord import FakeDiscord, shard_of

USER_ID = 333_333_333_333_333_333


def guild_on(shard: int, count: int, *, after: int = 800_000_000_000_000_000) -> int:
    """Return a realistic guild id above `after` that lands on `shard` of `count`."""
    guild_id = after + 1
    while shard_of(guild_id, count) != shard:
        guild_id += 1 << 22
    return guild_id


GUILD_0, GUILD_1 = guild_on(0, 2), guild_on(1, 2)
CHANNEL_0, CHANNEL_1 = 710_000_000_000_000_001, 710_000_000_000_000_002


class GatewayClient:
    """A bare websocket client of the fake gateway: identifies and records what it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._received = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Record every dispatch until the connection closes."""
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                payload = json.loads(message.data)
                if payload.get("op") == 0:
                    async with self._received:
                        self.events.append(payload)
                        self._received.notify_all()
        self.close_code = self.ws.close_code

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        """Wait until `predicate` holds, re-checked on every event this client receives."""
        async with self._received:
            await asyncio.wait_for(self._received.wait_for(predicate), 5)

    def names(self) -> list[str]:
        """The event names received, in order."""
        return [event["t"] for event in self.events]

    def guilds_created(self) -> list[int]:
        """The guild ids of every GUILD_CREATE received."""
        return [int(e["d"]["id"]) for e in self.events if e["t"] == "GUILD_CREATE"]

    def interactions(self) -> list[int]:
        """The ids of every INTERACTION_CREATE received."""
        return [int(e["d"]["id"]) for e in self.events if e["t"] == "INTERACTION_CREATE"]

    async def closed(self) -> int | None:
        """Wait for the server to close the connection and return its close code."""
        await asyncio.wait_for(self._reader, 5)
        return self.close_code

    async def close(self) -> None:
        """Stop reading, then close the connection (a close beside a reader waits it out)."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """A fake Discord with one guild (one channel, one member) on each shard of two."""
    fake = FakeDiscord(recommended_shards=2, max_concurrency=16)
    fake.add_guild(GUILD_0, name="Zero", channel_ids=[CHANNEL_0])
    fake.add_guild(GUILD_1, name="One", channel_ids=[CHANNEL_1])
    for guild in (GUILD_0, GUILD_1):
        fake.add_member(guild, USER_ID, name="tester")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session for the bare clients."""
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(
    fake: FakeDiscord, http: aiohttp.ClientSession, shard: list[int] | None
) -> GatewayClient:
    """Open a connection and identify, with `shard` if given."""
    ws = await http.ws_connect(fake.gateway_url)
    hello = await ws.receive_json()
    assert hello["op"] == 10
    identify: dict[str, Any] = {"token": fake.token, "intents": 1, "properties": {}}
    if shard is not None:
        identify["shard"] = shard
    await ws.send_json({"op": 2, "d": identify})
    return GatewayClient(ws)


async def test_each_shard_gets_only_its_guilds(
    fake: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    zero = await connect(fake, http, [0, 2])
    one = await connect(fake, http, [1, 2])
    await fake.wait_until_ready()
    assert fake.connected_shards() == [(0, 2), (1, 2)]
    await zero.wait_for(lambda: len(zero.events) == 2)
    await one.wait_for(lambda: len(one.events) == 2)
    assert zero.names() == one.names() == ["READY", "GUILD_CREATE"]
    assert zero.guilds_created() == [GUILD_0] and one.guilds_created() == [GUILD_1]
    ready = one.events[0]["d"]
    assert ready["shard"] == [1, 2] and ready["guilds"] == [
        {"id": str(GUILD_1), "unavailable": True}
    ]

    fake.commands[None] = [{"id": "1", "name": "ping", "type": 1, "options": []}]
    on_one = await fake.invoke_command("ping", guild_id=GUILD_1, channel_id=CHANNEL_1, user_id=1)
    on_zero = await fake.invoke_command("ping", guild_id=GUILD_0, channel_id=CHANNEL_0, user_id=1)
    await one.wait_for(one.interactions)
    await zero.wait_for(zero.interactions)
    assert one.interactions() == [on_one.id] and zero.interactions() == [on_zero.id]
    assert on_one.delivered_to == [(1, 2)] and on_zero.delivered_to == [(0, 2)]

    await fake.add_channel(GUILD_1, 710_000_000_000_000_003)
    await one.wait_for(lambda: "CHANNEL_CREATE" in one.names())
    assert "CHANNEL_CREATE" not in zero.names()
    await zero.close()
    await one.close()


async def test_direct_messages_arrive_on_shard_zero(
    fake: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    zero = await connect(fake, http, [0, 2])
    one = await connect(fake, http, [1, 2])
    await fake.wait_until_ready()
    auth = {"Authorization": f"Bot {fake.token}"}
    async with http.post(
        f"{fake.api_base}/users/@me/channels", json={"recipient_id": str(USER_ID)}, headers=auth
    ) as response:
        dm_channel = int((await response.json())["id"])
    button = {"type": 2, "style": 1, "label": "Go", "custom_id": "dm:go"}
    async with http.post(
        f"{fake.api_base}/channels/{dm_channel}/messages",
        json={"content": "hi", "components": [{"type": 1, "components": [button]}]},
        headers=auth,
    ) as response:
        assert response.status == 200
    message = fake.dm_messages(USER_ID)[0]
    click = await fake.click(message, "dm:go", user_id=USER_ID)
    await zero.wait_for(zero.interactions)
    assert zero.interactions() == [click.id] and one.interactions() == []
    assert click.delivered_to == [(0, 2)]
    await zero.close()
    await one.close()


async def test_two_sessions_of_one_shard_both_receive_its_events(
    fake: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    # Discord allows several sessions with the same [shard_id, num_shards]; none replaces another.
    first = await connect(fake, http, [1, 2])
    await fake.wait_until_ready(shard_ids=[1])
    second = await connect(fake, http, [1, 2])
    await fake.wait_for(lambda: fake.connected_shards() == [(1, 2), (1, 2)])
    fake.commands[None] = [{"id": "1", "name": "ping", "type": 1, "options": []}]
    interaction = await fake.invoke_command(
        "ping", guild_id=GUILD_1, channel_id=CHANNEL_1, user_id=1
    )
    await first.wait_for(first.interactions)
    await second.wait_for(second.interactions)
    assert interaction.delivered_to == [(1, 2), (1, 2)]
    assert first.close_code is None and not first.ws.closed
    with pytest.raises(AssertionError, match=f"no gateway session receives guild {GUILD_0}"):
        await fake.invoke_command("ping", guild_id=GUILD_0, channel_id=CHANNEL_0, user_id=1)
    await first.close()
    await second.close()


@pytest.mark.parametrize("shard", [[2, 2], [0, 0], [-1, 2], [0], ["0", "2"]])
async def test_an_invalid_shard_is_closed_with_4010(
    fake: FakeDiscord, http: aiohttp.ClientSession, shard: list[Any]
) -> None:
    client = await connect(fake, http, shard)
    assert await client.closed() == 4010
    assert fake.identifies == []


async def test_too_many_guilds_without_sharding_is_closed_with_4011(
    fake: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake.max_guilds_per_session = 1
    unsharded = await connect(fake, http, None)
    assert await unsharded.closed() == 4011
    zero = await connect(fake, http, [0, 2])
    one = await connect(fake, http, [1, 2])
    await fake.wait_until_ready()
    assert [(shard, count) for _, shard, count in fake.identifies] == [(0, 2), (1, 2)]
    await zero.close()
    await one.close()


async def test_gateway_bot_gives_the_recommendation_and_the_concurrency(
    fake: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake.recommended_shards, fake.max_concurrency = 3, 4
    async with http.get(
        f"{fake.api_base}/gateway/bot", headers={"Authorization": f"Bot {fake.token}"}
    ) as response:
        body = await response.json()
    assert body["shards"] == 3 and body["session_start_limit"]["max_concurrency"] == 4
    assert body["url"] == fake.gateway_url


class WhereBot(commands.AutoShardedBot):
    """A sharded bot whose /where answers with the shard that received the command."""

    def __init__(self, shard_count: int) -> None:
        """Create the bot with only the guilds intent."""
        super().__init__(
            command_prefix="!", intents=discord.Intents(guilds=True), shard_count=shard_count
        )

        @app_commands.command(name="where", description="Which shard am I on?")
        async def where(interaction: discord.Interaction[discord.Client]) -> None:
            """Reply with the guild's shard as this client knows it."""
            assert interaction.guild is not None
            await interaction.response.send_message(f"shard {interaction.guild.shard_id}")

        self.tree.add_command(where)

    async def setup_hook(self) -> None:
        """Sync the global commands."""
        await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Identify at once: the fake's max_concurrency of 16 gives each shard its own bucket."""


async def test_a_real_sharded_client_answers_on_both_shards(fake: FakeDiscord) -> None:
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    bot = WhereBot(shard_count=2)
    runner = asyncio.create_task(bot.start(fake.token))
    try:
        await fake.wait_until_ready()
        await bot.wait_until_ready()
        assert sorted(bot.shards) == [0, 1]
        assert {guild.id: guild.shard_id for guild in bot.guilds} == {GUILD_0: 0, GUILD_1: 1}
        for guild, channel, shard in ((GUILD_0, CHANNEL_0, 0), (GUILD_1, CHANNEL_1, 1)):
            interaction = await fake.invoke_command(
                "where", guild_id=guild, channel_id=channel, user_id=USER_ID
            )
            reply = await fake.wait_for(lambda i=interaction: i.original)
            assert reply.content == f"shard {shard}"
            assert interaction.delivered_to == [(shard, 2)]
        gateway_identifies = [m["d"]["shard"] for m in fake.gateway_received if m["op"] == 2]
        assert gateway_identifies == [[0, 2], [1, 2]]

        # One shard dropped: it alone resumes, and gets what was sent while it was away.
        await fake.disconnect_gateway(shard_id=1)
        missed = await fake.invoke_command(
            "where", guild_id=GUILD_1, channel_id=CHANNEL_1, user_id=USER_ID
        )
        reply = await fake.wait_for(lambda: missed.original)
        assert reply.content == "shard 1" and fake.resume_count == 1
        assert [m["op"] for m in fake.gateway_received if m["op"] in (2, 6)] == [2, 2, 6]
        assert fake.connected_shards() == [(0, 2), (1, 2)]
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
