"""The real bot on PostgreSQL (DATABASE_URL): delivery, restarts, crashes, and moving a SQLite
bot over with `migrate-store`, its old buttons still working. Each test has its own schema."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.core.crashpoints import CRASH_ENV
from tests.e2e.conftest import (
    ALICE,
    BOB,
    CHANNEL_A,
    GUILD_A,
    GUILD_B,
    MODERATOR,
    World,
)
from tests.e2e.harness import BotProcess, bot_environment
from tests.e2e.test_animate import embed_fields
from tests.e2e.test_startup import run_bot
from tests.fakes.discord import DEFAULT_MEMBER_PERMISSIONS, MANAGE_MESSAGES, FakeDiscord
from tests.fakes.predictions import FakePredictionAPI
from tests.postgres_server import fresh_schema, refused_port


class PostgresWorld(World):
    """A running bot whose store is a PostgreSQL schema (or SQLite, until it is moved)."""

    database_url: str

    async def row(self, job_id: int = 1) -> asyncpg.Record:
        """A job's row, read from PostgreSQL."""
        connection = await asyncpg.connect(self.database_url)
        try:
            row = await connection.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        finally:
            await connection.close()
        assert row is not None, f"no job {job_id}"
        return row

    async def row_reaches(self, job_id: int = 1, timeout: float = 20, **columns: Any) -> Any:
        """Wait until the bot records a job with these values (another process: polled)."""
        async with asyncio.timeout(timeout):
            while True:
                row = await self.row(job_id)
                if all(row[name] == value for name, value in columns.items()):
                    return row
                await asyncio.sleep(0.05)


@pytest.fixture
async def pg_world(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PostgresWorld]:
    """Fakes on 127.0.0.1 and the real bot on a fresh schema."""
    async with fresh_schema() as url:
        discord, api = FakeDiscord(), FakePredictionAPI()
        await discord.start()
        await api.start()
        for guild, channel in ((GUILD_A, CHANNEL_A), (GUILD_B, CHANNEL_A + 1)):
            discord.add_guild(guild, name=f"guild {guild}", channel_ids=[channel])
            discord.add_member(guild, ALICE, name="alice")
            discord.add_member(guild, BOB, name="bob")
            discord.add_member(
                guild,
                MODERATOR,
                name="mod",
                permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES,
            )
        marker = request.node.get_closest_marker("bot_env")
        extra = dict(marker.kwargs) if marker else {}
        # bot_env(DATABASE_URL="") starts it on SQLite, to be moved over by the test.
        extra.setdefault("DATABASE_URL", url)
        # A process killed with jobs running: the next one takes them over after this.
        extra.setdefault("JOB_LEASE_SECONDS", "3")
        env = bot_environment(
            discord,
            api,
            tmp_path / "state" / "bot.sqlite3",
            guild_ids=(GUILD_A, GUILD_B),
            extra=extra,
        )
        world = PostgresWorld(discord, api, BotProcess(env, tmp_path))
        world.database_url = url
        await world.bot.start()
        try:
            await discord.wait_until_ready(timeout=30)
            yield world
        finally:
            code = await world.bot.stop() if world.bot.process is not None else 0
            await api.close()
            await discord.close()
        log = world.bot.log()
        assert code == 0 and "Traceback" not in log, f"exit {code}\n{log}"
        assert not discord.unknown_routes, discord.unknown_routes


async def test_a_job_is_delivered_and_its_buttons_work_after_a_restart(
    pg_world: PostgresWorld,
) -> None:
    world = pg_world
    result = await world.result_for(
        await world.request_message(await world.animate("on postgres", steps=5, seed=21))
    )
    done = await world.row_reaches(1, status="done")
    assert done["result_message_id"] == result.id and done["interaction_token"] is None
    sqlite_file = Path(world.bot.env["DATABASE_PATH"])
    assert not await asyncio.to_thread(sqlite_file.exists), "SQLite was used as well"
    assert await world.restart() == 0
    click = await world.discord.click(result, result.button("Reroll")["custom_id"], user_id=BOB)
    rerolled = await world.result_for(await world.request_message(click))
    assert embed_fields(rerolled)["Seed"] != "21"
    second = await world.row_reaches(2, status="done", parent_job_id=1)
    assert second["requester_id"] == BOB
    await world.discord.click(result, result.button("Delete")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: result.deleted)
    await world.row_reaches(1, deleted=True)
    assert world.api.creates == 2


@pytest.mark.bot_env(**{CRASH_ENV: "running"})
async def test_a_crash_while_running_resumes_from_postgres_exactly_once(
    pg_world: PostgresWorld,
) -> None:
    world = pg_world
    request = await world.request_message(await world.animate("crash on postgres", steps=5))
    assert await world.bot.wait_exit() == -signal.SIGKILL
    assert (await world.row(1))["status"] == "running"
    await world.start_again(**{CRASH_ENV: None})
    result = await world.result_for(request)
    done = await world.row_reaches(1, status="done")
    assert done["result_message_id"] == result.id
    assert world.api.creates == 1 and len(world.results()) == 1


@pytest.mark.bot_env(DATABASE_URL="")
async def test_a_sqlite_bot_moved_with_migrate_store_keeps_its_buttons(
    pg_world: PostgresWorld, tmp_path: Path
) -> None:
    world = pg_world
    result = await world.result_for(
        await world.request_message(await world.animate("moving house", steps=5, seed=33))
    )
    await world.job_reaches("done")  # in the SQLite file
    assert await world.bot.stop() == 0
    code, output = await _migrate(world, tmp_path)
    assert code == 0 and "1 jobs" in output, output
    await world.start_again(DATABASE_URL=world.database_url)
    click = await world.discord.click(result, result.button("Reroll")["custom_id"], user_id=BOB)
    await world.result_for(await world.request_message(click))
    await world.row_reaches(2, status="done", parent_job_id=1)
    await world.discord.click(result, result.button("Delete")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: result.deleted)
    await world.row_reaches(1, deleted=True)
    assert world.job(1)["deleted"] == 0, "the moved bot wrote to the old SQLite file"


async def _migrate(world: World, workdir: Path) -> tuple[int, str]:
    """Run `python -m bot migrate-store --to DATABASE_URL` with the bot's environment."""
    assert isinstance(world, PostgresWorld)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "migrate-store",
        "--to",
        world.database_url,
        cwd=workdir,
        env=world.bot.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_an_unreachable_database_at_start_exits_1_with_one_line(tmp_path: Path) -> None:
    with refused_port() as port:
        code, output = await run_bot(
            {
                "DISCORD_TOKEN": "d",
                "REPLICATE_API_TOKEN": "r",
                "DATABASE_URL": f"postgresql://bot:s3cret-pw@127.0.0.1:{port}/animate",
            },
            tmp_path,
        )
    assert code == 1
    assert output.startswith(
        f"animate-bot: could not connect to PostgreSQL at 127.0.0.1:{port}/animate ("
    )
    assert output.endswith("check DATABASE_URL and that the server runs.\n")
    assert output.count("\n") == 1 and "s3cret-pw" not in output


@pytest.mark.parametrize(
    "url", ["mysql://bot@127.0.0.1/animate", "postgresql://bot:pw@host:port/db", "postgresql://h"]
)
async def test_a_malformed_database_url_exits_2_naming_it(tmp_path: Path, url: str) -> None:
    code, output = await run_bot(
        {"DISCORD_TOKEN": "d", "REPLICATE_API_TOKEN": "r", "DATABASE_URL": url}, tmp_path
    )
    assert code == 2 and output.startswith("animate-bot: DATABASE_URL is invalid: ")
    assert output.count("\n") == 1 and ":pw@" not in output


async def test_a_second_process_on_the_same_shards_is_refused_with_one_line(
    pg_world: PostgresWorld, tmp_path: Path
) -> None:
    world = pg_world
    code, output = await run_bot(world.bot.env, tmp_path)
    assert code == 1, output
    assert output == (
        "animate-bot: another animate-bot process already runs shard 0 of 1 on this database; "
        "give each process its own SHARD_IDS.\n"
    )
    # The first process is untouched by the attempt: it still serves.
    await world.result_for(await world.request_message(await world.animate("still here")))
