"""Starting the real bot with bad settings ends with one clear line, never a traceback."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT
from tests.fakes.discord import FakeDiscord


async def run_bot(env: dict[str, str], workdir: Path) -> tuple[int, str]:
    """Run `python -m bot` to its end and return the exit code and everything it printed."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DISCORD_", "REPLICATE_", "DATABASE_"))
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=workdir,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    """A fake Discord on 127.0.0.1 that knows no token the tests below use."""
    fake = FakeDiscord()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


async def test_a_token_discord_refuses(tmp_path: Path, discord: FakeDiscord) -> None:
    code, output = await run_bot(
        {
            "DISCORD_TOKEN": "not-the-right-token",
            "REPLICATE_API_TOKEN": "r",
            "DISCORD_API_BASE": discord.api_base,
            "DISCORD_GATEWAY_URL": discord.gateway_url,
        },
        tmp_path,
    )
    assert code == 1
    assert "animate-bot: Discord refused DISCORD_TOKEN; check the token." in output
    assert "Traceback" not in output and "not-the-right-token" not in output


async def test_discord_out_of_reach(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, output = await run_bot(
        {
            "DISCORD_TOKEN": "d",
            "REPLICATE_API_TOKEN": "r",
            "DISCORD_API_BASE": f"http://127.0.0.1:{port}/api/v10",
        },
        tmp_path,
    )
    assert code == 1
    assert f"animate-bot: could not reach Discord at http://127.0.0.1:{port}/api/v10" in output
    assert "Traceback" not in output


async def test_the_database_folder_is_created(tmp_path: Path, discord: FakeDiscord) -> None:
    code, output = await run_bot(
        {"DISCORD_TOKEN": "bad", "REPLICATE_API_TOKEN": "r", "DISCORD_API_BASE": discord.api_base},
        tmp_path,
    )
    assert code == 1, output
    assert (tmp_path / "data" / "animate-bot.sqlite3").is_file()


async def test_a_webhook_port_in_use(tmp_path: Path, discord: FakeDiscord) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await run_bot(
            {
                "DISCORD_TOKEN": discord.token,
                "REPLICATE_API_TOKEN": "r",
                "DISCORD_API_BASE": discord.api_base,
                "DISCORD_GATEWAY_URL": discord.gateway_url,
                "PUBLIC_WEBHOOK_URL": "https://bot.example.com/hooks",
                "WEBHOOK_LISTEN_HOST": "127.0.0.1",
                "WEBHOOK_LISTEN_PORT": str(port),
            },
            tmp_path,
        )
    assert code == 1, output
    assert f"animate-bot: could not listen for webhooks on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


async def test_a_webhook_url_that_is_not_http(tmp_path: Path) -> None:
    code, output = await run_bot(
        {"DISCORD_TOKEN": "d", "REPLICATE_API_TOKEN": "r", "PUBLIC_WEBHOOK_URL": "bot.example.com"},
        tmp_path,
    )
    assert code == 2, output
    assert "PUBLIC_WEBHOOK_URL is invalid" in output and "Traceback" not in output
