"""End-to-end harness: the real bot (`python -m bot`) against fake Discord and prediction API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import BotProcess, bot_environment
from tests.fakes.discord import (
    DEFAULT_MEMBER_PERMISSIONS,
    MANAGE_MESSAGES,
    FakeDiscord,
    FakeMessage,
)
from tests.fakes.predictions import FakePredictionAPI

GUILD_A, GUILD_B = 800_000_000_000_000_001, 800_000_000_000_000_002
CHANNEL_A, CHANNEL_B = 810_000_000_000_000_001, 810_000_000_000_000_002
ALICE, BOB, MODERATOR, CAROL = (
    900_000_000_000_000_001,
    900_000_000_000_000_002,
    900_000_000_000_000_003,
    900_000_000_000_000_004,
)


@dataclass
class World:
    """One running bot with its fakes and helpers for what tests do most."""

    discord: FakeDiscord
    api: FakePredictionAPI
    bot: BotProcess

    async def animate(
        self,
        prompt: str,
        *,
        user: int = ALICE,
        guild: int = GUILD_A,
        channel: int = CHANNEL_A,
        **options: Any,
    ) -> Any:
        """Invoke /animate as a member."""
        return await self.discord.invoke_command(
            "animate",
            {"prompt": prompt, **options},
            guild_id=guild,
            channel_id=channel,
            user_id=user,
        )

    async def result_for(self, request: FakeMessage, timeout: float = 20) -> FakeMessage:
        """Wait for the message that replies to a request with its result."""

        def find() -> FakeMessage | None:
            for message in self.discord.messages.values():
                reference = message.message_reference or {}
                if str(reference.get("message_id")) == str(request.id) and not message.deleted:
                    return message
            return None

        return await self.discord.wait_for(find, timeout=timeout)

    async def request_message(self, interaction: Any) -> FakeMessage:
        """Wait until a request's status message shows its Cancel button, and return it."""

        def ready() -> FakeMessage | None:
            original = interaction.original
            if original is not None and "Cancel" in _labels(original):
                return original
            return None

        return await self.discord.wait_for(ready)

    async def restart(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Stop the bot with a signal and start it again; return the exit code."""
        code = await self.bot.stop(sig)
        await self.start_again()
        return code

    async def start_again(self, **env: str | None) -> None:
        """Start the bot after it ended, with environment changes (None removes a variable)."""
        for key, value in env.items():
            if value is None:
                self.bot.env.pop(key, None)
            else:
                self.bot.env[key] = value
        ready_before = self.discord.ready_count
        await self.bot.start()
        await self.discord.wait_for(lambda: self.discord.ready_count > ready_before, timeout=30)

    def job(self, job_id: int = 1) -> sqlite3.Row:
        """A job's row, read from the bot's database."""
        with contextlib.closing(sqlite3.connect(self.bot.env["DATABASE_PATH"])) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        assert row is not None, f"no job {job_id}"
        return row

    async def job_reaches(
        self, status: str | None = None, job_id: int = 1, timeout: float = 20, **columns: object
    ) -> sqlite3.Row:
        """Wait until the bot records a job with these values (another process: polled)."""
        if status is not None:
            columns["status"] = status
        async with asyncio.timeout(timeout):
            while True:
                row = self.job(job_id)
                if all(row[name] == value for name, value in columns.items()):
                    return row
                # The database belongs to another process: nothing to wait on but the file.
                await asyncio.sleep(0.05)

    def results(self, channel: int = CHANNEL_A) -> list[FakeMessage]:
        """Messages in a channel that carry a file."""
        return [m for m in self.discord.channel_messages(channel) if m.attachments]


def _labels(message: FakeMessage) -> list[str]:
    """Labels of every button on a message."""
    labels: list[str] = []
    for row in message.components:
        for component in row.get("components", []):
            if component.get("type") == 2:
                labels.append(str(component.get("label")))
    return labels


labels = _labels


@pytest.fixture
async def world(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """Fakes on 127.0.0.1 and the real bot connected to them."""
    discord = FakeDiscord()
    api = FakePredictionAPI()
    await discord.start()
    await api.start()
    discord.add_guild(GUILD_A, name="Alpha", channel_ids=[CHANNEL_A])
    discord.add_guild(GUILD_B, name="Beta", channel_ids=[CHANNEL_B])
    for guild in (GUILD_A, GUILD_B):
        discord.add_member(guild, ALICE, name="alice")
        discord.add_member(guild, BOB, name="bob")
        discord.add_member(guild, CAROL, name="carol")
        discord.add_member(
            guild, MODERATOR, name="mod", permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES
        )
    marker = request.node.get_closest_marker("bot_env")
    extra_env: dict[str, str] = dict(marker.kwargs) if marker else {}
    env = bot_environment(
        discord,
        api,
        tmp_path / "state" / "bot.sqlite3",
        guild_ids=(GUILD_A, GUILD_B),
        extra=extra_env,
    )
    bot = BotProcess(env, tmp_path)
    world = World(discord, api, bot)
    await bot.start()
    try:
        await discord.wait_until_ready(timeout=30)
        yield world
    finally:
        code = await bot.stop() if bot.process is not None else 0
        await api.close()
        await discord.close()
    log = bot.log()
    problems = []
    if code != 0:
        problems.append(f"the bot exited with {code}")
    if discord.unknown_routes:
        problems.append(f"unexpected Discord routes: {discord.unknown_routes}")
    if "Traceback" in log:
        problems.append("the bot logged a traceback")
    assert not problems, "; ".join(problems) + f"\n===== bot log =====\n{log}"
