"""The real bot sharded: one process running every shard, `auto`, and one process per shard."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from tests.e2e.conftest import ALICE, World
from tests.e2e.harness import BotProcess, bot_environment
from tests.e2e.test_startup import run_bot
from tests.fakes.discord import FakeDiscord, shard_of
from tests.fakes.predictions import FakePredictionAPI


def guild_on(shard: int, count: int, *, after: int) -> int:
    """Return a realistic guild id above `after` that lands on `shard` of `count`."""
    guild_id = after + 1
    while shard_of(guild_id, count) != shard:
        guild_id += 1 << 22
    return guild_id


# One guild on each shard of three, so that shards 0 and 1 of two hold one each as well.
GUILDS = {
    shard: guild_on(shard, 6, after=820_000_000_000_000_000 + shard * (1 << 30))
    for shard in range(3)
}
CHANNELS = {shard: 830_000_000_000_000_000 + shard for shard in range(3)}


@contextlib.asynccontextmanager
async def fakes(
    *, recommended_shards: int = 1, max_concurrency: int = 1
) -> AsyncIterator[tuple[FakeDiscord, FakePredictionAPI]]:
    """A fake Discord with the three guilds (Alice in each) and a fake prediction API."""
    discord = FakeDiscord(recommended_shards=recommended_shards, max_concurrency=max_concurrency)
    api = FakePredictionAPI()
    await discord.start()
    await api.start()
    for shard, guild in GUILDS.items():
        discord.add_guild(guild, name=f"Shard {shard}", channel_ids=[CHANNELS[shard]])
        discord.add_member(guild, ALICE, name="alice")
    try:
        yield discord, api
    finally:
        await api.close()
        await discord.close()


def bot(
    discord: FakeDiscord, api: FakePredictionAPI, workdir: Path, env: Mapping[str, str]
) -> BotProcess:
    """A bot process with its own folder and SQLite file."""
    workdir.mkdir(parents=True, exist_ok=True)
    environment = bot_environment(
        discord, api, workdir / "bot.sqlite3", guild_ids=GUILDS.values(), extra=env
    )
    return BotProcess(environment, workdir)


async def stop_cleanly(process: BotProcess, discord: FakeDiscord) -> None:
    """Stop a bot and require a clean exit, known routes only and no traceback."""
    code = await process.stop()
    log = process.log()
    assert code == 0 and "Traceback" not in log, log
    assert discord.unknown_routes == []


async def animate_and_deliver(world: World, shard: int) -> list[tuple[int, int]]:
    """Run /animate in the guild of `shard`, wait for its result; return the shards it went to."""
    interaction = await world.animate(
        f"a fox on shard {shard}", guild=GUILDS[shard], channel=CHANNELS[shard], steps=5
    )
    request = await world.request_message(interaction)
    result = await world.result_for(request)
    assert result.attachments and result.channel_id == CHANNELS[shard]
    return interaction.delivered_to


def job_guilds(process: BotProcess) -> list[int]:
    """The guild of every job in a bot's own database."""
    with contextlib.closing(sqlite3.connect(process.env["DATABASE_PATH"])) as db:
        return [row[0] for row in db.execute("SELECT guild_id FROM jobs ORDER BY id")]


async def test_one_process_runs_both_shards_and_serves_a_guild_on_each(tmp_path: Path) -> None:
    async with fakes(max_concurrency=2) as (discord, api):
        process = bot(discord, api, tmp_path, {"SHARD_COUNT": "2"})
        await process.start()
        await discord.wait_until_ready(timeout=30)
        assert [(shard, count) for _, shard, count in discord.identifies] == [(0, 2), (1, 2)]
        world = World(discord, api, process)
        assert await animate_and_deliver(world, 0) == [(0, 2)]
        assert await animate_and_deliver(world, 1) == [(1, 2)]
        assert "connecting all 2 shards" in process.log()
        await stop_cleanly(process, discord)


async def test_auto_takes_the_count_discord_recommends(tmp_path: Path) -> None:
    async with fakes(recommended_shards=3, max_concurrency=4) as (discord, api):
        process = bot(discord, api, tmp_path, {"SHARD_COUNT": "auto"})
        await process.start()
        await discord.wait_until_ready(timeout=30)
        assert sorted(shard for _, shard, _ in discord.identifies) == [0, 1, 2]
        assert {count for _, _, count in discord.identifies} == {3}
        assert any(r.path == "/gateway/bot" for r in discord.requests)
        assert await animate_and_deliver(World(discord, api, process), 2) == [(2, 3)]
        await stop_cleanly(process, discord)


async def test_a_single_shard_asks_nothing_and_waits_for_nothing(tmp_path: Path) -> None:
    async with fakes() as (discord, api):
        process = bot(discord, api, tmp_path, {})
        await process.start()
        await discord.wait_until_ready(timeout=30)
        assert [(shard, count) for _, shard, count in discord.identifies] == [(0, 1)]
        assert not any(r.path == "/gateway/bot" for r in discord.requests)
        assert await animate_and_deliver(World(discord, api, process), 1) == [(0, 1)]
        await stop_cleanly(process, discord)


async def test_two_processes_each_receive_only_their_shard(tmp_path: Path) -> None:
    # Each on its own SQLite file for now: shared state comes with the PostgreSQL store.
    async with fakes(max_concurrency=1) as (discord, api):
        processes = {
            shard: bot(
                discord,
                api,
                tmp_path / f"shard-{shard}",
                {"SHARD_COUNT": "2", "SHARD_IDS": f"{shard}"},
            )
            for shard in (0, 1)
        }
        await processes[0].start()
        await discord.wait_until_ready(timeout=30, shard_ids=[0])
        await processes[1].start()
        await discord.wait_until_ready(timeout=30)
        assert discord.connected_shards() == [(0, 2), (1, 2)]
        for shard, process in processes.items():
            assert await animate_and_deliver(World(discord, api, process), shard) == [(shard, 2)]
        assert job_guilds(processes[0]) == [GUILDS[0]]
        assert job_guilds(processes[1]) == [GUILDS[1]]
        assert "connecting shards 1 of 2" in processes[1].log()
        for process in processes.values():
            await stop_cleanly(process, discord)


async def test_too_many_servers_without_sharding_is_one_clear_line(tmp_path: Path) -> None:
    async with fakes() as (discord, api):
        discord.max_guilds_per_session = 2
        env = bot_environment(discord, api, tmp_path / "bot.sqlite3", guild_ids=())
        code, output = await run_bot(env, tmp_path)
    assert code == 1, output
    assert "animate-bot: Discord requires sharding for this many servers (gateway close 4011)" in (
        output
    )
    assert "SHARD_COUNT=auto" in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"SHARD_COUNT": "2", "SHARD_IDS": "2"}, "SHARD_IDS"),
        ({"SHARD_COUNT": "many"}, "SHARD_COUNT"),
    ],
)
async def test_bad_shard_settings_exit_2(tmp_path: Path, env: dict[str, str], setting: str) -> None:
    code, output = await run_bot(
        {"DISCORD_TOKEN": "d", "REPLICATE_API_TOKEN": "r", **env}, tmp_path
    )
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"animate-bot: {setting} is invalid"), output
