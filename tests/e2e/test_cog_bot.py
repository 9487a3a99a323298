"""End to end on the bot's own GPU: /animate, the status line, /animate-queue and
/animate-usage say where it ran.

The real bot with COG_URLS naming a real Cog server (PyPI `cog`) and no Replicate token; its
callbacks and the metrics endpoints share the one listener of WEBHOOK_LISTEN_PORT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.cog_servers import SAMPLE, CogServerProcess, start_all
from tests.e2e.conftest import ALICE, CHANNEL_A, GUILD_A, World
from tests.e2e.harness import BotProcess
from tests.e2e.test_cog_crash_recovery import cog_environment
from tests.fakes.discord import DEFAULT_MEMBER_PERMISSIONS, FakeDiscord, FakeInteraction
from tests.fakes.predictions import FakePredictionAPI

OWNER = 900_000_000_000_000_010
MANAGE_GUILD = 1 << 5


async def queue_view(world: World) -> str:
    """Run /animate-queue as Alice and return its private reply."""
    interaction: FakeInteraction = await world.discord.invoke_command(
        "animate-queue", {}, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
    )
    await world.discord.wait_for(lambda: interaction.callbacks)
    return str(interaction.callbacks[0]["data"]["content"])


@pytest.fixture
async def gpu_world(tmp_path: Path) -> AsyncIterator[World]:
    """The bot on one real Cog server whose predictions take 8 s."""
    [gpu] = start_all([CogServerProcess(seconds=8, log_dir=tmp_path)])
    discord, api = FakeDiscord(), FakePredictionAPI()
    await discord.start()
    await api.start()
    discord.add_guild(GUILD_A, name="Alpha", channel_ids=[CHANNEL_A])
    discord.add_member(GUILD_A, ALICE, name="alice")
    discord.add_member(
        GUILD_A, OWNER, name="owner", permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_GUILD
    )
    env = cog_environment(discord, api, [gpu], tmp_path / "state", webhooks=True)
    env.update(METRICS_LISTEN_HOST="127.0.0.1", METRICS_LISTEN_PORT=env["WEBHOOK_LISTEN_PORT"])
    bot = BotProcess(env, tmp_path)
    await bot.start()
    try:
        await discord.wait_until_ready(timeout=30)
        yield World(discord, api, bot)
    finally:
        code = await bot.stop() if bot.process is not None else 0
        await api.close()
        await discord.close()
        gpu.stop()
    log = bot.log()
    assert code == 0 and "Traceback" not in log, f"exit {code}\n===== bot log =====\n{log}"


async def test_a_request_runs_on_the_named_gpu_and_says_so(gpu_world: World) -> None:
    world = gpu_world
    request = await world.request_message(await world.animate("a lighthouse", steps=5, seed=3))
    # Once placed, the status line names the GPU (edits come at most every 5 s).
    await world.discord.wait_for(lambda: "· on `gpu-0`" in request.content, timeout=20)
    queue = await queue_view(world)
    assert "· on `gpu-0`" in queue.split("\n")[1]
    port = world.bot.env["WEBHOOK_LISTEN_PORT"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as metrics,
    ):
        assert metrics.status == 200  # beside the Cog callbacks, on the one listener
    result = await world.result_for(request, timeout=30)
    assert result.attachments[0].data == SAMPLE.read_bytes()
    fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
    assert fields["Seed"] == "3" and "Note" not in fields
    assert world.api.creates == 0
    await world.job_reaches("done")
    # The GPU time is the own GPU's, free at the default COG_PRICE_PER_GPU_SECOND.
    usage: FakeInteraction = await world.discord.invoke_command(
        "animate-usage", {}, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=OWNER
    )
    original = await world.discord.wait_for(lambda: usage.original)
    text = str(original.embeds[0]["description"])
    assert "Total: 1 prediction · " in text, text
    # The server sleeps 8 s per prediction: what it reports as predict_time.
    assert "· ≈ $0.00: Replicate 0.0 s ≈ $0.00 · own GPUs 8." in text, text
    assert f"<@{ALICE}> · 1 · Replicate 0.0 s $0.00 · own 8." in text, text
