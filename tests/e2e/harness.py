"""The real bot as a subprocess against the fakes: shared by the e2e tests and bench/."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.fakes.discord import FakeDiscord
from tests.fakes.predictions import FakePredictionAPI

ROOT = Path(__file__).resolve().parents[2]

# Settings of the caller's shell that would leak into the bot under test.
_OWN_PREFIXES = (
    "DISCORD_",
    "REPLICATE_",
    "DATABASE_",
    "MAX_",
    "PREDICTION_",
    "DEFAULT_",
    "PRICE_",
    "SHARD_",
    "COG_",
    "OVERFLOW_",
)


def bot_environment(
    discord: FakeDiscord,
    api: FakePredictionAPI,
    database_path: Path,
    *,
    guild_ids: Iterable[int],
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the environment that points `python -m bot` at the fakes and a database file."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_OWN_PREFIXES)}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        DISCORD_TOKEN=discord.token,
        REPLICATE_API_TOKEN=api.token,
        REPLICATE_API_BASE=api.base_url,
        DATABASE_PATH=str(database_path),
        DISCORD_GUILD_IDS=",".join(str(guild) for guild in guild_ids),
        DISCORD_API_BASE=discord.api_base,
        DISCORD_GATEWAY_URL=discord.gateway_url,
        LOG_LEVEL="INFO",
    )
    env.update(extra or {})
    return env


class BotProcess:
    """The bot as a user runs it: `python -m bot` in its own process."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / "bot.log"
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start the bot, appending its output to the log file."""
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"----- start {self.starts} -----\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int:
        """Send a signal and wait for the process to end; return its exit code."""
        process = self.process
        assert process is not None
        if process.returncode is None:
            process.send_signal(sig)
        async with asyncio.timeout(timeout):
            code = await process.wait()
        self.process = None
        return code

    async def wait_exit(self, timeout: float = 20) -> int:
        """Wait for the process to end by itself; return its exit code."""
        process = self.process
        assert process is not None
        async with asyncio.timeout(timeout):
            code = await process.wait()
        self.process = None
        return code

    def log(self) -> str:
        """Everything the bot printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
