"""End to end: under a load whose status edits would need more requests a second than Discord
allows, the bot stays inside DISCORD_REQUESTS_PER_SECOND: Discord answers no 429, and every
result is posted once. Scaled down: the fake allows 7 a second where Discord allows 50."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ALICE, BOB, CAROL, CHANNEL_A, CHANNEL_B, GUILD_A, GUILD_B, World
from tests.fakes.predictions import Behaviour

FAKE_GLOBAL_LIMIT = 7
MEMBERS = (ALICE, BOB, CAROL)
REQUESTS_EACH = 3  # the per-member cap


async def _flood(world: World) -> int:
    """Queue the most requests the members may, in both servers; return how many."""
    # Runs of about 1.3 s, two at a time: results (never delayed) and their final edits need
    # 3 requests a second, and each end moves every waiting place of its server.
    world.api.behaviour_for = lambda _data: Behaviour(queue_time=0.05, step_time=0.12)
    world.discord.global_limit = FAKE_GLOBAL_LIMIT
    count = 0
    for guild, channel in ((GUILD_A, CHANNEL_A), (GUILD_B, CHANNEL_B)):
        for member in MEMBERS:
            for n in range(REQUESTS_EACH):
                await world.request_message(
                    await world.animate(
                        f"wave {n}", user=member, guild=guild, channel=channel, steps=10
                    )
                )
                count += 1
    return count


async def _all_posted(world: World, count: int) -> None:
    """Wait until every request's result is posted, once each."""

    def posted() -> bool:
        return len(world.results(CHANNEL_A)) + len(world.results(CHANNEL_B)) >= count

    await world.discord.wait_for(posted, timeout=90)
    assert len(world.results(CHANNEL_A)) + len(world.results(CHANNEL_B)) == count
    assert world.api.creates == count


@pytest.mark.bot_env(DISCORD_REQUESTS_PER_SECOND="5", MAX_RUNNING_TOTAL="2")
async def test_the_budget_keeps_discord_from_answering_429(world: World) -> None:
    count = await _flood(world)
    await _all_posted(world, count)
    assert world.discord.global_429s == 0


@pytest.mark.bot_env(DISCORD_REQUESTS_PER_SECOND="1000", MAX_RUNNING_TOTAL="2")
async def test_without_the_budget_the_same_load_is_throttled(world: World) -> None:
    # The control: the load above really asks for more than the fake allows.
    count = await _flood(world)
    await _all_posted(world, count)
    assert world.discord.global_429s > 0
