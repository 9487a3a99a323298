"""Guarantee 1 with the bot's own GPUs: killed at any boundary, every request is delivered once.

The real bot (`python -m bot`) runs with COG_URLS naming two real Cog servers (PyPI `cog`)
and no Replicate token; ANIMATE_CRASH_AT makes it SIGKILL itself at a point of a job's life,
and the test starts it again on the same database. The job finds its prediction on the same
server by the same id, or runs it again with the same input and seed.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.backends.cog.ids import server_of
from bot.core.crashpoints import CRASH_ENV, POINTS
from tests.cog_servers import SAMPLE, CogServerProcess, free_port, start_all
from tests.e2e.conftest import ALICE, CHANNEL_A, GUILD_A, GUILD_B, World
from tests.e2e.harness import BotProcess, bot_environment
from tests.fakes.discord import FakeDiscord
from tests.fakes.predictions import FakePredictionAPI

AFTER_THE_MESSAGE = [point for point in POINTS if point not in ("accepted", "acknowledged")]


@pytest.fixture(scope="module")
def gpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[CogServerProcess]]:
    """Two real Cog servers whose predictions take a second."""
    logs = tmp_path_factory.mktemp("cog-logs")
    servers = start_all([CogServerProcess(seconds=1.0, log_dir=logs) for _ in range(2)])
    yield servers
    for server in servers:
        server.stop()


def cog_environment(
    discord: FakeDiscord,
    api: FakePredictionAPI,
    gpus: list[CogServerProcess],
    state: Path,
    *,
    webhooks: bool,
) -> dict[str, str]:
    """The bot's environment: Discord is the fake, the predictions go to the Cog servers only."""
    port = free_port()
    env = bot_environment(discord, api, state / "bot.sqlite3", guild_ids=(GUILD_A, GUILD_B))
    del env["REPLICATE_API_TOKEN"]
    env.update(
        COG_URLS=",".join(f"gpu-{n}={server.url}" for n, server in enumerate(gpus)),
        COG_HEALTH_CHECK_SECONDS="0.5",  # losses are judged by time, not by checks
        WEBHOOK_LISTEN_HOST="127.0.0.1",
        WEBHOOK_LISTEN_PORT=str(port),
    )
    if webhooks:
        env["COG_CALLBACK_URL"] = f"http://127.0.0.1:{port}/cog"
    return env


@pytest.fixture
async def cog_world(
    tmp_path: Path, gpus: list[CogServerProcess], request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    """The real bot on the fake Discord and the real Cog servers, crashing where it is told."""
    for server in gpus:
        server.wait_ready()  # nothing left running from the test before
    discord, api = FakeDiscord(), FakePredictionAPI()
    await discord.start()
    await api.start()
    discord.add_guild(GUILD_A, name="Alpha", channel_ids=[CHANNEL_A])
    discord.add_member(GUILD_A, ALICE, name="alice")
    point, mode = request.param
    env = cog_environment(discord, api, gpus, tmp_path / "state", webhooks=mode == "webhooks")
    env[CRASH_ENV] = point
    bot = BotProcess(env, tmp_path)
    await bot.start()
    try:
        await discord.wait_until_ready(timeout=30)
        yield World(discord, api, bot)
    finally:
        code = await bot.stop() if bot.process is not None else 0
        await api.close()
        await discord.close()
    log = bot.log()
    assert code == 0 and "Traceback" not in log, f"exit {code}\n===== bot log =====\n{log}"


@pytest.mark.parametrize(
    "cog_world",
    [
        pytest.param((point, mode), id=f"{point}-{mode}")
        for mode in ("webhooks", "held-requests")
        for point in AFTER_THE_MESSAGE
    ],
    indirect=True,
)
async def test_a_crash_at_each_boundary_delivers_once_from_the_gpus(cog_world: World) -> None:
    world = cog_world
    point = world.bot.env[CRASH_ENV]
    request = await world.request_message(await world.animate(f"crash {point}", steps=5, seed=7))
    assert await world.bot.wait_exit() == -signal.SIGKILL
    assert f"crash point '{point}' reached" in world.bot.log()
    await world.start_again(**{CRASH_ENV: None})
    result = await world.result_for(request, timeout=30)
    done = await world.job_reaches("done", timeout=30)
    assert done["result_message_id"] == result.id
    assert len(world.results()) == 1, "the result was posted twice"
    assert result.attachments[0].data == SAMPLE.read_bytes()
    assert server_of(done["prediction_id"]) in ("gpu-0", "gpu-1")
    assert world.api.creates == 0, "Replicate was used without a token"
    fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
    assert fields["Seed"] == "7"
    if done["reruns"]:
        # Lost with the bot (its output, or its held-open request): made again, and said so.
        assert "same input and seed" in fields["Note"]
    await world.discord.wait_for(lambda: "Done" in request.content)
