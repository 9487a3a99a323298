"""Two real bot processes (shards 0 and 1 of 2) on one PostgreSQL schema share
DISCORD_REQUESTS_PER_SECOND as a total: under a flood of status edits on both shards, Discord
answers no 429 and every result is posted once. Scaled down as in test_discord_budget: the fake
allows 7 requests a second where Discord allows 50."""

from __future__ import annotations

import asyncio
import re

from tests.e2e.conftest import ALICE, BOB, CAROL
from tests.e2e.test_processes import Cluster, cluster
from tests.e2e.test_sharding import CHANNELS, GUILDS
from tests.fakes.discord import FakeMessage
from tests.fakes.predictions import Behaviour

__all__ = ["cluster"]  # the fixture, imported for pytest to find

FAKE_GLOBAL_LIMIT = 7
MEMBERS = (ALICE, BOB, CAROL)
REQUESTS_EACH = 3  # the per-member cap
SHARDS = (0, 1)  # GUILDS[0] is on shard 0 of 2, GUILDS[1] on shard 1
NAMES = tuple(f"shard-{shard}" for shard in SHARDS)


async def _two_processes(c: Cluster, per_second: str) -> None:
    """Start one process per shard and wait until each one has counted both."""
    for guild in (GUILDS[shard] for shard in SHARDS):
        c.discord.add_member(guild, CAROL, name="carol")
    for shard, name in zip(SHARDS, NAMES, strict=True):
        c.add(name, 2, str(shard), DISCORD_REQUESTS_PER_SECOND=per_second, MAX_RUNNING_TOTAL="2")
    await c.start(*NAMES)
    async with asyncio.timeout(10):
        while True:
            if len(await c.query("SELECT 1 FROM bot_processes")) == 2:
                break
            await asyncio.sleep(0.05)  # the rows are the processes'
    # A renewal after both rows exist counts both, and takes its share (total / 2) at once.
    ((now,),) = await c.query("SELECT now()")
    for name in NAMES:
        await c.knows_of_processes(name, now)


async def _flood(c: Cluster) -> list[FakeMessage]:
    """Queue the most requests the members may, on both shards; return their status messages."""
    # Runs of about 1.3 s, two at a time over both processes: results (never delayed) and their
    # final edits need 3 requests a second, and each end moves every waiting place of its server.
    c.api.behaviour_for = lambda _data: Behaviour(queue_time=0.05, step_time=0.12)
    c.discord.global_limit = FAKE_GLOBAL_LIMIT
    requests: list[FakeMessage] = []
    for shard in SHARDS:
        for member in MEMBERS:
            for n in range(REQUESTS_EACH):
                interaction = await c.world.animate(
                    f"wave {n}", user=member, guild=GUILDS[shard], channel=CHANNELS[shard], steps=10
                )
                requests.append(await c.world.request_message(interaction))
    return requests


async def _all_posted(c: Cluster, requests: list[FakeMessage]) -> None:
    """Wait until every request's result is posted, once each, by both processes between them."""
    await c.discord.wait_for(lambda: all(c.results_of(r) for r in requests), timeout=50)
    assert [len(c.results_of(r)) for r in requests] == [1] * len(requests), "posted twice"
    assert c.api.creates == len(requests), "a prediction was paid for twice"
    delivered = re.compile(r"\bjob \d+ (delivered|was already posted) as message ")
    for name in NAMES:
        assert delivered.search(c.processes[name].log()), f"{name} posted no result"


async def test_two_processes_together_keep_discord_from_answering_429(cluster: Cluster) -> None:
    # The same total as the one-process test (5 against the fake's 7): each process takes 2.
    await _two_processes(cluster, per_second="5")
    await _all_posted(cluster, await _flood(cluster))
    assert cluster.discord.global_429s == 0


async def test_a_total_twice_as_large_is_throttled_as_two_unshared_budgets_would_be(
    cluster: Cluster,
) -> None:
    # The control: at a total of 10 (5 each, what a budget of 5 per process would allow) the
    # same load asks for more than the fake allows. So the pass above is the sharing's.
    await _two_processes(cluster, per_second="10")
    await _all_posted(cluster, await _flood(cluster))
    assert cluster.discord.global_429s > 0
