"""`python -m bot check` against the fakes: a row per check, exit codes, no gateway, no secrets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.app.check import CHECK_NAMES
from bot.storage.sqlite_migrations import MIGRATIONS
from tests.cog_servers import CogServerProcess, foreign_model, start_all
from tests.e2e.harness import bot_environment
from tests.fakes.discord import FakeDiscord
from tests.fakes.predictions import FakePredictionAPI

# Distinctive values, so that a leak anywhere in the output is found by a plain search.
DISCORD_SECRET = "discord-secret-Zq8wX2pLm4"
REPLICATE_SECRET = "r8_replicate-secret-Vb7nK3tHs9"
CONSOLE_SCRIPT = Path(sys.executable).with_name("animate-bot")


@dataclass
class Checked:
    """What one run of the check command did."""

    code: int
    stdout: str
    stderr: str

    def rows(self) -> dict[str, tuple[str, str]]:
        """The table's rows by check name: (result, detail)."""
        rows: dict[str, tuple[str, str]] = {}
        for line in self.stdout.splitlines():
            for name in CHECK_NAMES:
                if line.startswith(name + " "):
                    result, _, detail = line[len(name) :].strip().partition(" ")
                    rows[name] = (result, detail.strip())
        return rows


@dataclass
class Fakes:
    """Both fakes and the environment that points the bot at them."""

    discord: FakeDiscord
    api: FakePredictionAPI
    env: dict[str, str]
    workdir: Path


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    """A fake Discord and prediction API that accept the distinctive tokens."""
    discord = FakeDiscord(token=DISCORD_SECRET)
    api = FakePredictionAPI(token=REPLICATE_SECRET)
    await discord.start()
    await api.start()
    env = bot_environment(discord, api, tmp_path / "state" / "bot.sqlite3", guild_ids=[1, 2])
    try:
        yield Fakes(discord, api, env, tmp_path)
    finally:
        await api.close()
        await discord.close()


async def run_check(
    fakes: Fakes, *, command: list[str] | None = None, **env: str | None
) -> Checked:
    """Run the check command to its end with environment changes (None removes a variable)."""
    full_env = dict(fakes.env)
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    process = await asyncio.create_subprocess_exec(
        *(command or [sys.executable, "-m", "bot", "check"]),
        cwd=fakes.workdir,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    checked = Checked(process.returncode, out.decode(), err.decode())
    # Whatever happened, neither token may show, in the table or in the log.
    for secret in (DISCORD_SECRET, REPLICATE_SECRET):
        assert secret not in checked.stdout + checked.stderr
    assert "Traceback" not in checked.stderr, checked.stderr
    return checked


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exists(path: Path) -> bool:
    """Whether a file exists (a helper, so the async tests read no file system directly)."""
    return path.exists()


def make_read_only(path: Path, *, read_only: bool) -> None:
    """Take away (or give back) write permission on a file and its folder."""
    if read_only:
        path.chmod(stat.S_IRUSR)
        path.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    else:
        path.parent.chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def assert_no_gateway(discord: FakeDiscord) -> None:
    """The check used REST only: no gateway URL asked for, no websocket opened."""
    assert discord.gateway_received == []
    assert discord.ready_count == 0
    assert all(not r.path.startswith("/gateway") for r in discord.requests)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "bot", "check"], id="python -m bot check"),
        pytest.param([str(CONSOLE_SCRIPT), "check"], id="animate-bot check"),
    ],
)
async def test_a_good_configuration_passes_every_check(fakes: Fakes, command: list[str]) -> None:
    if not CONSOLE_SCRIPT.exists() and command[0] == str(CONSOLE_SCRIPT):
        pytest.skip("the animate-bot console script is not installed next to this Python")
    checked = await run_check(fakes, command=command)
    assert checked.code == 0, checked
    rows = checked.rows()
    assert [result for result, _ in rows.values()] == ["OK"] * 4 + ["SKIPPED"], checked.stdout
    assert rows["settings"][1] == "both tokens set; commands sync to 2 server(s)"
    database = fakes.env["DATABASE_PATH"]
    assert rows["database"][1] == (
        f"{database} (created), schema version {len(MIGRATIONS)}, writable"
    )
    assert rows["Discord token"][1] == "accepted: bot FakeBot (id 1000)"
    assert rows["prediction API"][1] == f"token accepted at {fakes.api.base_url}"
    assert checked.stdout.rstrip().endswith("all checks passed")
    assert_no_gateway(fakes.discord)
    assert [(r.method, r.path) for r in fakes.discord.requests] == [("GET", "/users/@me")]
    assert [(r.method, r.path) for r in fakes.api.requests] == [("GET", "/v1/predictions")]
    # Migrated, and the write that proved it writable was rolled back.
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT COUNT(*) FROM timings").fetchone()[0] == 0


async def test_with_webhooks_the_signing_secret_is_fetched(fakes: Fakes) -> None:
    url = "https://bot.example.com/hooks/replicate"
    checked = await run_check(fakes, PUBLIC_WEBHOOK_URL=url, WEBHOOK_LISTEN_PORT="9000")
    assert checked.code == 0, checked
    assert checked.rows()["webhooks"] == (
        "OK",
        f"signing secret fetched; listening on 0.0.0.0:9000 for {url}",
    )
    assert ("GET", "/v1/webhooks/default/secret") in [
        (r.method, r.path) for r in fakes.api.requests
    ]
    fakes.api.inject("GET", r"/v1/webhooks/default/secret", status=404)
    checked = await run_check(fakes, PUBLIC_WEBHOOK_URL=url)
    assert checked.code == 1 and checked.rows()["webhooks"][0] == "FAIL", checked


async def test_the_table_is_aligned(fakes: Fakes) -> None:
    checked = await run_check(fakes, DISCORD_GUILD_IDS="")
    lines = checked.stdout.splitlines()[:5]
    assert lines[0].split() == ["check", "result", "detail"]
    # Every row's result and detail start in the same columns as the header's.
    result_column, detail_column = lines[0].index("result"), lines[0].index("detail")
    for line in lines[1:]:
        assert line[result_column : result_column + 2] == "OK", line
        assert line[detail_column - 2 : detail_column] == "  " and line[detail_column] != " "
    assert checked.rows()["settings"][1] == "both tokens set; commands sync globally"


async def test_an_existing_database_is_reported_as_such(fakes: Fakes) -> None:
    assert (await run_check(fakes)).code == 0
    checked = await run_check(fakes)
    assert checked.code == 0
    assert "(existing file)" in checked.rows()["database"][1]


async def test_a_token_discord_refuses_fails_its_row(fakes: Fakes) -> None:
    checked = await run_check(fakes, DISCORD_TOKEN="wrong-discord-token-Kp2")
    assert checked.code == 1, checked
    rows = checked.rows()
    assert rows["Discord token"] == ("FAIL", "Discord refused DISCORD_TOKEN; check the token")
    assert rows["settings"][0] == rows["database"][0] == rows["prediction API"][0] == "OK"
    assert "wrong-discord-token-Kp2" not in checked.stdout + checked.stderr
    assert "1 of 5 checks failed" in checked.stdout
    assert_no_gateway(fakes.discord)


async def test_a_token_the_prediction_api_refuses_fails_its_row(fakes: Fakes) -> None:
    checked = await run_check(fakes, REPLICATE_API_TOKEN="wrong-replicate-token-Jd5")
    assert checked.code == 1, checked
    rows = checked.rows()
    assert rows["prediction API"] == (
        "FAIL",
        "the API refused REPLICATE_API_TOKEN "
        "(HTTP 401: You did not pass a valid authentication token)",
    )
    assert rows["Discord token"][0] == "OK"
    assert "wrong-replicate-token-Jd5" not in checked.stdout + checked.stderr


async def test_a_forbidden_token_fails_too(fakes: Fakes) -> None:
    fakes.api.inject(
        "GET", "/v1/predictions", status=403, body={"detail": "Token lacks access", "status": 403}
    )
    checked = await run_check(fakes)
    assert checked.code == 1
    assert checked.rows()["prediction API"] == (
        "FAIL",
        "the API refused REPLICATE_API_TOKEN (HTTP 403: Token lacks access)",
    )


async def test_unreachable_services_are_named_with_their_url(fakes: Fakes) -> None:
    discord_base = f"http://127.0.0.1:{closed_port()}/api/v10"
    api_base = f"http://127.0.0.1:{closed_port()}/v1"
    checked = await run_check(fakes, DISCORD_API_BASE=discord_base, REPLICATE_API_BASE=api_base)
    assert checked.code == 1, checked
    rows = checked.rows()
    assert rows["Discord token"][0] == "FAIL"
    assert rows["Discord token"][1].startswith(
        f"could not reach Discord at {discord_base}/users/@me"
    )
    assert rows["prediction API"][0] == "FAIL"
    assert rows["prediction API"][1].startswith(
        f"could not reach the prediction API at {api_base}/predictions"
    )
    assert "2 of 5 checks failed" in checked.stdout


async def test_credentials_in_a_base_url_are_masked(fakes: Fakes) -> None:
    base = f"http://operator:hunter2-password@127.0.0.1:{closed_port()}/v1"
    checked = await run_check(fakes, REPLICATE_API_BASE=base)
    assert checked.code == 1
    assert "hunter2-password" not in checked.stdout + checked.stderr
    result, detail = checked.rows()["prediction API"]
    assert result == "FAIL"
    assert detail.startswith("cannot send a request to http://[redacted]@127.0.0.1"), detail


async def test_a_base_that_is_not_a_url_fails(fakes: Fakes) -> None:
    checked = await run_check(fakes, DISCORD_API_BASE="discord.example/api")
    assert checked.code == 1
    assert checked.rows()["Discord token"] == (
        "FAIL",
        "discord.example/api/users/@me is not a valid URL; check DISCORD_API_BASE",
    )


async def test_a_silent_api_fails_after_the_short_time_out(fakes: Fakes) -> None:
    fakes.api.inject("GET", "/v1/predictions", status=200, delay=30)
    started = asyncio.get_running_loop().time()
    checked = await run_check(fakes)
    assert asyncio.get_running_loop().time() - started < 25
    assert checked.code == 1
    assert checked.rows()["prediction API"] == (
        "FAIL",
        f"the prediction API at {fakes.api.base_url}/predictions did not answer within 10 s",
    )


async def test_an_api_that_redirects_fails_without_following(fakes: Fakes) -> None:
    fakes.api.inject(
        "GET", "/v1/predictions", status=307, headers={"Location": "http://127.0.0.2:9/v1"}
    )
    checked = await run_check(fakes)
    assert checked.code == 1
    assert checked.rows()["prediction API"] == (
        "FAIL",
        f"{fakes.api.base_url}/predictions redirects (HTTP 307); check REPLICATE_API_BASE",
    )
    assert len(fakes.api.requests) == 1


async def test_a_database_from_a_newer_bot_fails(fakes: Fakes) -> None:
    path = Path(fakes.env["DATABASE_PATH"])
    path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    checked = await run_check(fakes)
    assert checked.code == 1, checked
    assert checked.rows()["database"] == (
        "FAIL",
        f"{path}: The database is at schema version {len(MIGRATIONS) + 1}, newer than this bot "
        f"({len(MIGRATIONS)}); upgrade the bot.",
    )
    # The other checks still ran.
    assert checked.rows()["Discord token"][0] == checked.rows()["prediction API"][0] == "OK"


async def test_a_database_path_that_cannot_be_created_fails(fakes: Fakes) -> None:
    blocker = fakes.workdir / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")
    checked = await run_check(fakes, DATABASE_PATH=str(blocker / "bot.sqlite3"))
    assert checked.code == 1, checked
    result, detail = checked.rows()["database"]
    assert result == "FAIL"
    assert detail.startswith(f"cannot open or create {blocker / 'bot.sqlite3'} (")


async def test_a_file_that_is_not_a_database_fails(fakes: Fakes) -> None:
    path = fakes.workdir / "garbage.sqlite3"
    path.write_bytes(b"not SQLite at all " * 100)
    checked = await run_check(fakes, DATABASE_PATH=str(path))
    assert checked.code == 1
    assert checked.rows()["database"] == (
        "FAIL",
        f"cannot open or create {path} (file is not a database)",
    )


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders"
)
async def test_a_database_in_a_read_only_folder_fails(fakes: Fakes) -> None:
    folder = fakes.workdir / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        checked = await run_check(fakes, DATABASE_PATH=str(folder / "bot.sqlite3"))
    finally:
        folder.chmod(stat.S_IRWXU)
    assert checked.code == 1
    result, detail = checked.rows()["database"]
    assert result == "FAIL" and detail.startswith(f"cannot open or create {folder}")


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only files"
)
async def test_a_read_only_database_file_fails(fakes: Fakes) -> None:
    assert (await run_check(fakes)).code == 0
    path = Path(fakes.env["DATABASE_PATH"])
    make_read_only(path, read_only=True)
    try:
        checked = await run_check(fakes)
    finally:
        make_read_only(path, read_only=False)
    assert checked.code == 1
    result, detail = checked.rows()["database"]
    assert result == "FAIL" and str(path) in detail


@pytest.mark.parametrize("missing", ["DISCORD_TOKEN", "REPLICATE_API_TOKEN"])
async def test_missing_tokens_exit_2_and_skip_the_rest(fakes: Fakes, missing: str) -> None:
    checked = await run_check(fakes, **{missing: None})
    assert checked.code == 2, checked
    rows = checked.rows()
    assert rows["settings"] == (
        "FAIL",
        f"{missing} is not set: put it in the environment or in .env",
    )
    for name in ("database", "Discord token", "prediction API"):
        assert rows[name] == ("SKIPPED", "needs valid settings")
    assert fakes.discord.requests == [] and fakes.api.requests == []
    assert not exists(Path(fakes.env["DATABASE_PATH"]))


async def test_help_and_unknown_commands(fakes: Fakes) -> None:
    helped = await run_check(fakes, command=[sys.executable, "-m", "bot", "--help"])
    assert helped.code == 0
    assert "usage: animate-bot [-h] [--to URL] [check | migrate-store]" in helped.stdout
    assert "check   check settings, the database" in helped.stdout
    assert "migrate-store --to postgresql://" in helped.stdout
    wrong = await run_check(fakes, command=[sys.executable, "-m", "bot", "chekc"])
    assert wrong.code == 2
    assert "invalid choice: 'chekc'" in wrong.stderr
    assert fakes.discord.requests == [] and fakes.api.requests == []


async def test_each_cog_server_has_a_row_with_its_health(fakes: Fakes, tmp_path: Path) -> None:
    good = CogServerProcess(log_dir=tmp_path)
    other = CogServerProcess(model=foreign_model(tmp_path / "other"), log_dir=tmp_path)
    start_all([good, other])
    try:
        urls = f"gpu-a={good.url},gpu-b={other.url},gpu-c=http://127.0.0.1:{closed_port()}"
        checked = await run_check(fakes, REPLICATE_API_TOKEN=None, COG_URLS=urls)
    finally:
        good.stop()
        other.stop()
    rows = {
        line.split()[1]: line.split(None, 3)[2:]
        for line in checked.stdout.splitlines()
        if line.startswith("Cog ")
    }
    assert rows["gpu-a"][0] == "OK" and "READY" in rows["gpu-a"][1]
    assert "takes this model's inputs" in rows["gpu-a"][1]
    assert rows["gpu-b"][0] == "FAIL"
    assert "does not take this model's inputs (no n_prompt, motion_module)" in rows["gpu-b"][1]
    assert rows["gpu-c"][0] == "FAIL" and "could not reach the Cog server" in rows["gpu-c"][1]
    assert checked.rows()["prediction API"] == ("SKIPPED", "REPLICATE_API_TOKEN is not set")
    assert checked.code == 1
