"""One bot process per SQLite file: a second one is refused, since both would resume (and
post) the same jobs; a process killed with SIGKILL leaves no lock behind."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bot.core.crashpoints import CRASH_ENV
from tests.e2e.conftest import World
from tests.e2e.test_startup import run_bot


async def test_a_second_process_on_the_same_file_is_refused_with_one_line(
    world: World, tmp_path: Path
) -> None:
    code, output = await run_bot(world.bot.env, tmp_path)
    assert code == 1, output
    database = world.bot.env["DATABASE_PATH"]
    assert output == (
        f"animate-bot: another animate-bot process is running on {database}; one process per "
        "SQLite file (share a PostgreSQL DATABASE_URL to run several).\n"
    )
    await world.result_for(await world.request_message(await world.animate("still served")))


@pytest.mark.bot_env(**{CRASH_ENV: "running"})
async def test_a_killed_process_leaves_the_file_free_for_the_next(world: World) -> None:
    request = await world.request_message(await world.animate("killed", steps=5))
    assert await world.bot.wait_exit() == -signal.SIGKILL
    await world.start_again(**{CRASH_ENV: None})
    await world.result_for(request)
    assert world.api.creates == 1
