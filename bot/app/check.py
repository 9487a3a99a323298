"""`python -m bot check`: test the configuration without connecting to the gateway."""

from __future__ import annotations

import asyncio
import enum
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp
import asyncpg

from bot.app.settings import Settings, SettingsError, load_settings
from bot.backends.cog.probe import probe_server
from bot.backends.probing import REQUEST_TIMEOUT_SECONDS, Unanswered, get_once, reason
from bot.backends.replicate_check import check_signing_secret, check_token
from bot.core import redaction
from bot.storage.base import SchemaTooNew, StorageUnavailable
from bot.storage.postgres import PostgresStore, create_pool, server_name
from bot.storage.sqlite import SQLiteStore

# Discord asks every REST client to name itself in this form.
DISCORD_USER_AGENT = "DiscordBot (animate-bot, 0.1.0) animate-bot-check"

EXIT_OK = 0
EXIT_FAILED = 1
# The start command's code for the same problem, so scripts can treat both alike.
EXIT_BAD_SETTINGS = 2


class Outcome(enum.Enum):
    """What became of one check."""

    OK = "OK"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Result:
    """One row of the report."""

    name: str
    outcome: Outcome
    detail: str


CHECK_NAMES = ("settings", "database", "Discord token", "prediction API", "webhooks")


async def run_checks(load: Callable[[], Settings] = load_settings) -> list[Result]:
    """Run every check in order; with invalid settings, mark the others skipped."""
    try:
        settings = load()
    except SettingsError as exc:
        skipped = [
            Result(name, Outcome.SKIPPED, "needs valid settings") for name in CHECK_NAMES[1:]
        ]
        return [Result("settings", Outcome.FAIL, str(exc)), *skipped]
    # Every detail goes through redact(); registering the tokens makes them masked too.
    redaction.register_secret(settings.discord_token.get_secret_value())
    if settings.replicate_api_token is not None:
        redaction.register_secret(settings.replicate_api_token.get_secret_value())
    if settings.database_url is not None:
        database = await check_postgres(settings.database_url.get_secret_value())
    else:
        database = await check_database(settings.database_path)
    results = [_settings_result(settings), database]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        results.append(await check_discord(http, settings))
        results.append(await check_prediction_api(http, settings))
        results.append(await check_webhooks(http, settings))
        results.extend(await check_cog_servers(http, settings))
    return results


def _settings_result(settings: Settings) -> Result:
    """Summarise the settings that decide where the bot connects and syncs."""
    guilds = len(settings.discord_guild_ids)
    sync = f"commands sync to {guilds} server(s)" if guilds else "commands sync globally"
    return Result("settings", Outcome.OK, f"both tokens set; {sync}")


async def check_database(path: Path) -> Result:
    """Open (creating) and migrate the database, then prove it takes a write."""
    existed = await asyncio.to_thread(path.exists)
    try:
        store = await SQLiteStore.open(path)
    except SchemaTooNew as exc:
        return Result("database", Outcome.FAIL, f"{path}: {exc}")
    except (OSError, sqlite3.Error) as exc:
        return Result("database", Outcome.FAIL, f"cannot open or create {path} ({reason(exc)})")
    try:
        version = await store.schema_version()
        await store.probe_write()
    except (OSError, sqlite3.Error) as exc:
        return Result("database", Outcome.FAIL, f"cannot write {path} ({reason(exc)})")
    finally:
        await store.close()
    how = "existing file" if existed else "created"
    return Result("database", Outcome.OK, f"{path} ({how}), schema version {version}, writable")


async def check_postgres(url: str) -> Result:
    """Connect to DATABASE_URL, migrate its schema, then prove it takes a write."""
    where = server_name(url)
    try:
        pool = await create_pool(url, size=1)
    except StorageUnavailable as exc:
        return Result("database", Outcome.FAIL, str(exc))
    try:
        store = await PostgresStore.open(pool)
        version = await store.schema_version()
        await store.probe_write()
    except SchemaTooNew as exc:
        return Result("database", Outcome.FAIL, f"PostgreSQL at {where}: {exc}")
    except (StorageUnavailable, asyncpg.PostgresError) as exc:
        return Result("database", Outcome.FAIL, f"PostgreSQL at {where} refused ({exc})")
    finally:
        await pool.close()
    return Result(
        "database", Outcome.OK, f"PostgreSQL at {where}, schema version {version}, writable"
    )


async def check_discord(http: aiohttp.ClientSession, settings: Settings) -> Result:
    """Ask Discord who the token belongs to (REST only: the gateway is never opened)."""
    name = "Discord token"
    url = f"{settings.discord_api_base}/users/@me"
    headers = {
        "Authorization": f"Bot {settings.discord_token.get_secret_value()}",
        "User-Agent": DISCORD_USER_AGENT,
    }
    try:
        status, body = await get_once(
            http, url, headers, service="Discord", setting="DISCORD_API_BASE"
        )
    except Unanswered as exc:
        return Result(name, Outcome.FAIL, str(exc))
    if status == 401:
        return Result(name, Outcome.FAIL, "Discord refused DISCORD_TOKEN; check the token")
    if status != 200:
        return Result(name, Outcome.FAIL, f"Discord answered HTTP {status} at {url}")
    if not isinstance(body, dict) or "id" not in body or "username" not in body:
        return Result(name, Outcome.FAIL, f"{url} answered 200 but not with a Discord user")
    return Result(name, Outcome.OK, f"accepted: bot {body['username']} (id {body['id']})")


async def check_prediction_api(http: aiohttp.ClientSession, settings: Settings) -> Result:
    """Ask the prediction API whether it takes the token."""
    if settings.replicate_api_token is None:
        return Result("prediction API", Outcome.SKIPPED, "REPLICATE_API_TOKEN is not set")
    probe = await check_token(
        http,
        base=settings.replicate_api_base,
        token=settings.replicate_api_token.get_secret_value(),
    )
    return Result("prediction API", Outcome.OK if probe.ok else Outcome.FAIL, probe.detail)


async def check_webhooks(http: aiohttp.ClientSession, settings: Settings) -> Result:
    """With PUBLIC_WEBHOOK_URL set, fetch the signing secret that deliveries are checked with."""
    name = "webhooks"
    if settings.public_webhook_url is None:
        return Result(
            name, Outcome.SKIPPED, "PUBLIC_WEBHOOK_URL is not set: predictions are polled"
        )
    if settings.replicate_api_token is None:
        return Result(name, Outcome.SKIPPED, "REPLICATE_API_TOKEN is not set")
    probe = await check_signing_secret(
        http,
        base=settings.replicate_api_base,
        token=settings.replicate_api_token.get_secret_value(),
    )
    if not probe.ok:
        return Result(name, Outcome.FAIL, probe.detail)
    where = f"{settings.webhook_listen_host}:{settings.webhook_listen_port}"
    return Result(
        name,
        Outcome.OK,
        f"{probe.detail}; listening on {where} for {settings.public_webhook_url}",
    )


async def check_cog_servers(http: aiohttp.ClientSession, settings: Settings) -> list[Result]:
    """One row per Cog server: its health, and whether it takes this model's inputs."""
    probes = await asyncio.gather(*(probe_server(http, url) for _, url in settings.cog_urls))
    return [
        Result(f"Cog {name}", Outcome.OK if probe.ok else Outcome.FAIL, probe.detail)
        for (name, _), probe in zip(settings.cog_urls, probes, strict=True)
    ]


def render(results: Sequence[Result]) -> str:
    """Lay the results out as an aligned plain-text table with a closing summary."""
    rows = [("check", "result", "detail")]
    rows += [(r.name, r.outcome.value, redaction.redact(r.detail)) for r in results]
    width_name = max(len(row[0]) for row in rows)
    width_outcome = max(len(row[1]) for row in rows)
    lines = [f"{a:<{width_name}}  {b:<{width_outcome}}  {c}".rstrip() for a, b, c in rows]
    failed = sum(r.outcome is Outcome.FAIL for r in results)
    lines.append("")
    lines.append(f"{failed} of {len(results)} checks failed" if failed else "all checks passed")
    return "\n".join(lines) + "\n"


def exit_code(results: Sequence[Result]) -> int:
    """0 when every check passed, 2 for invalid settings, 1 for any other failure."""
    if any(r.name == "settings" and r.outcome is Outcome.FAIL for r in results):
        return EXIT_BAD_SETTINGS
    if any(r.outcome is Outcome.FAIL for r in results):
        return EXIT_FAILED
    return EXIT_OK


async def main(load: Callable[[], Settings] = load_settings, out: TextIO = sys.stdout) -> int:
    """Run the checks, print the table, and return the exit code."""
    results = await run_checks(load)
    out.write(render(results))
    out.flush()
    return exit_code(results)
