"""`python -m bot check`: test the configuration without connecting to the gateway."""

from __future__ import annotations

import asyncio
import enum
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from bot.app.settings import Settings, SettingsError, load_settings
from bot.backends.webhooks import SigningKey
from bot.core import redaction
from bot.storage.base import SchemaTooNew
from bot.storage.sqlite import SQLiteStore

# Short: an operator waits at a prompt, and a healthy service answers in well under a second.
REQUEST_TIMEOUT_SECONDS = 10.0
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
    redaction.register_secret(settings.replicate_api_token.get_secret_value())
    results = [_settings_result(settings), await check_database(settings.database_path)]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        results.append(await check_discord(http, settings))
        results.append(await check_prediction_api(http, settings))
        results.append(await check_webhooks(http, settings))
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
        return Result("database", Outcome.FAIL, f"cannot open or create {path} ({_reason(exc)})")
    try:
        version = await store.schema_version()
        await store.probe_write()
    except (OSError, sqlite3.Error) as exc:
        return Result("database", Outcome.FAIL, f"cannot write {path} ({_reason(exc)})")
    finally:
        await store.close()
    how = "existing file" if existed else "created"
    return Result("database", Outcome.OK, f"{path} ({how}), schema version {version}, writable")


async def check_discord(http: aiohttp.ClientSession, settings: Settings) -> Result:
    """Ask Discord who the token belongs to (REST only: the gateway is never opened)."""
    name = "Discord token"
    url = f"{settings.discord_api_base}/users/@me"
    headers = {
        "Authorization": f"Bot {settings.discord_token.get_secret_value()}",
        "User-Agent": DISCORD_USER_AGENT,
    }
    try:
        status, body = await _get(http, url, headers, service="Discord", setting="DISCORD_API_BASE")
    except _Unanswered as exc:
        return Result(name, Outcome.FAIL, str(exc))
    if status == 401:
        return Result(name, Outcome.FAIL, "Discord refused DISCORD_TOKEN; check the token")
    if status != 200:
        return Result(name, Outcome.FAIL, f"Discord answered HTTP {status} at {url}")
    if not isinstance(body, dict) or "id" not in body or "username" not in body:
        return Result(name, Outcome.FAIL, f"{url} answered 200 but not with a Discord user")
    return Result(name, Outcome.OK, f"accepted: bot {body['username']} (id {body['id']})")


async def check_prediction_api(http: aiohttp.ClientSession, settings: Settings) -> Result:
    """List predictions with the bearer token: the cheapest authenticated request."""
    name = "prediction API"
    url = f"{settings.replicate_api_base}/predictions"
    try:
        status, body = await _get_from_api(http, settings, url)
    except _Unanswered as exc:
        return Result(name, Outcome.FAIL, str(exc))
    detail = body.get("detail") if isinstance(body, dict) else None
    said = f": {' '.join(detail.split())}" if isinstance(detail, str) and detail.strip() else ""
    if status in (401, 403):
        return Result(
            name, Outcome.FAIL, f"the API refused REPLICATE_API_TOKEN (HTTP {status}{said})"
        )
    if 300 <= status < 400:
        return Result(
            name, Outcome.FAIL, f"{url} redirects (HTTP {status}); check REPLICATE_API_BASE"
        )
    if status != 200:
        return Result(name, Outcome.FAIL, f"the API answered HTTP {status} at {url}{said}")
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        return Result(name, Outcome.FAIL, f"{url} answered 200 but not with a prediction list")
    return Result(name, Outcome.OK, f"token accepted at {settings.replicate_api_base}")


async def check_webhooks(http: aiohttp.ClientSession, settings: Settings) -> Result:
    """With PUBLIC_WEBHOOK_URL set, fetch the signing secret that deliveries are checked with."""
    name = "webhooks"
    if settings.public_webhook_url is None:
        return Result(
            name, Outcome.SKIPPED, "PUBLIC_WEBHOOK_URL is not set: predictions are polled"
        )
    url = f"{settings.replicate_api_base}/webhooks/default/secret"
    try:
        status, body = await _get_from_api(http, settings, url)
    except _Unanswered as exc:
        return Result(name, Outcome.FAIL, str(exc))
    key = body.get("key") if isinstance(body, dict) else None
    if status != 200 or not isinstance(key, str):
        return Result(name, Outcome.FAIL, f"no signing secret at {url} (HTTP {status})")
    try:
        SigningKey.from_secret(key)
    except ValueError as exc:
        return Result(name, Outcome.FAIL, f"the signing secret at {url} is unusable: {exc}")
    where = f"{settings.webhook_listen_host}:{settings.webhook_listen_port}"
    return Result(
        name,
        Outcome.OK,
        f"signing secret fetched; listening on {where} for {settings.public_webhook_url}",
    )


class _Unanswered(Exception):
    """A request got no HTTP answer; the message says why, for the table."""


async def _get_from_api(
    http: aiohttp.ClientSession, settings: Settings, url: str
) -> tuple[int, Any]:
    """GET a URL of the prediction API with the bearer token (see `_get`)."""
    headers = {"Authorization": f"Bearer {settings.replicate_api_token.get_secret_value()}"}
    return await _get(
        http, url, headers, service="the prediction API", setting="REPLICATE_API_BASE"
    )


async def _get(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    service: str,
    setting: str,
) -> tuple[int, Any]:
    """GET once, without following redirects; return the status and the JSON body (or None)."""
    try:
        # No redirects: a token must not travel to another origin (see DESIGN.md).
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, await _json_or_none(response)
    except aiohttp.InvalidURL:
        raise _Unanswered(f"{url} is not a valid URL; check {setting}") from None
    except TimeoutError:
        raise _Unanswered(
            f"{service} at {url} did not answer within {REQUEST_TIMEOUT_SECONDS:g} s"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _Unanswered(f"could not reach {service} at {url} ({_reason(exc)})") from None
    except ValueError as exc:
        # aiohttp refuses to send, for one, an Authorization header to a URL with user:password@.
        raise _Unanswered(f"cannot send a request to {url} ({_reason(exc)})") from None


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    """Parse the body as JSON, or return None when it is not JSON."""
    try:
        return await response.json(content_type=None)
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    """One line saying what went wrong, naming the exception when it has no message."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


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
