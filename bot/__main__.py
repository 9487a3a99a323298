"""Entry point: `python -m bot` or the `animate-bot` console script."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import aiohttp
import discord
import discord.http
import yarl

from bot.app import check
from bot.app.client import (
    AnimateBot,
    ExtensionsFailed,
    WebhookListenFailed,
    use_discord_endpoints,
)
from bot.app.migrate_store import migrate_store
from bot.app.monitoring import MetricsListenFailed
from bot.app.settings import Settings, SettingsError, load_settings
from bot.app.stores import StoreOpenFailed, open_store
from bot.core import redaction
from bot.observability.logs import JsonFormatter
from bot.storage.leases import ShardsTaken

log = logging.getLogger("bot")


def configure_logging(
    level: str, secrets: list[str] | None = None, *, log_format: str = "text"
) -> None:
    """Log to stderr with secrets masked, as text or JSON, quieting discord.py below warnings."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-8s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handlers = logging.getLogger().handlers
    if log_format == "json":
        for handler in handlers:
            handler.setFormatter(JsonFormatter())
    # On the root handlers, so that every logger's records pass through the mask.
    redaction.install(handlers, secrets or [])
    if level != "DEBUG":
        logging.getLogger("discord").setLevel(logging.WARNING)


async def run(settings: Settings) -> int:
    """Run the bot until SIGTERM or SIGINT, then shut down leaving every job recorded."""
    use_discord_endpoints(settings)
    try:
        opened = await open_store(settings)
    except StoreOpenFailed as exc:
        print(redaction.redact(f"animate-bot: {exc}."), file=sys.stderr)
        return 1
    store = opened.store
    try:
        # Every running job may hold a create open (Prefer: wait): aiohttp's default of 100
        # connections would queue polls and downloads behind them.
        connector = aiohttp.TCPConnector(limit=settings.max_running_total + 100)
        async with aiohttp.ClientSession(connector=connector) as session:
            bot = AnimateBot(
                settings,
                session=session,
                store=store,
                shared=opened.shared,
                membership=opened.membership,
            )
            return await _serve(bot, settings.discord_token.get_secret_value())
    finally:
        await opened.close()


async def _serve(bot: AnimateBot, token: str) -> int:
    """Start the bot and stop it cleanly on a signal."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(bot.start(token, reconnect=True), name="discord")
    stopper = asyncio.create_task(stop.wait(), name="signal")
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stopper.done():
        log.info("stopping: running jobs stay recorded and resume on the next start")
    stopper.cancel()
    await bot.close()
    if not runner.done():
        runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        error = await asyncio.gather(runner, return_exceptions=True)
        if isinstance(error[0], WebhookListenFailed | MetricsListenFailed):
            print(f"animate-bot: {error[0]}", file=sys.stderr)
            return 1
        if isinstance(error[0], ShardsTaken):
            print(f"animate-bot: {error[0]}.", file=sys.stderr)
            return 1
        if isinstance(error[0], ExtensionsFailed):
            print(f"animate-bot: {error[0]}; see the log above.", file=sys.stderr)
            return 1
        if isinstance(error[0], discord.LoginFailure):
            print("animate-bot: Discord refused DISCORD_TOKEN; check the token.", file=sys.stderr)
            return 1
        if isinstance(error[0], discord.ConnectionClosed) and error[0].code == 4011:
            print(
                "animate-bot: Discord requires sharding for this many servers (gateway close "
                "4011); set SHARD_COUNT=auto or a larger SHARD_COUNT.",
                file=sys.stderr,
            )
            return 1
        if isinstance(error[0], aiohttp.ClientError | OSError) and not bot.is_ready():
            # The address may carry credentials (user:password@host): mask them.
            print(
                redaction.redact(
                    f"animate-bot: could not reach Discord at {discord.http.Route.BASE} "
                    f"({error[0]}); check the network or DISCORD_API_BASE."
                ),
                file=sys.stderr,
            )
            return 1
        if isinstance(error[0], BaseException) and not isinstance(error[0], asyncio.CancelledError):
            log.error("the bot stopped with an error", exc_info=error[0])
            return 1
    return 0


USAGE_EPILOG = """\
commands:
  (none)  start the bot: connect to Discord and serve /animate until SIGTERM or Ctrl-C
  check   check settings, the database, DISCORD_TOKEN and REPLICATE_API_TOKEN without
          connecting to the gateway, and print a table of the results
  migrate-store --to postgresql://...
          copy the SQLite database at DATABASE_PATH into an empty PostgreSQL database

exit codes:
  0  the bot stopped cleanly / every check passed
  1  the bot stopped on an error / a check failed
  2  invalid settings (or arguments)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line: nothing to start the bot, `check` to check the configuration."""
    parser = argparse.ArgumentParser(
        prog="animate-bot",
        description="A Discord bot that turns /animate prompts into short animations.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["check", "migrate-store"],
        metavar="check | migrate-store",
        help="check the configuration, or copy the store, instead of starting the bot",
    )
    parser.add_argument(
        "--to",
        metavar="URL",
        help="migrate-store: the postgresql:// URL of the empty database to copy into",
    )
    args = parser.parse_args(argv)
    if (args.command == "migrate-store") != (args.to is not None):
        parser.error("--to goes with migrate-store, and migrate-store needs --to")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the bot, or with `check` check the configuration; exit 2 on invalid settings."""
    args = parse_args(argv)
    if args.command == "check":
        return run_check()
    if args.command == "migrate-store":
        return run_migrate_store(args.to)
    return start()


def start() -> int:
    """Read settings, then run the bot; exit 2 on a configuration error."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"animate-bot: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level, secrets=_secrets(settings), log_format=settings.log_format
    )
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0


def run_migrate_store(target_url: str) -> int:
    """Run `animate-bot migrate-store --to URL` and return its exit code."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"animate-bot: {exc}", file=sys.stderr)
        return 2
    configure_logging("WARNING", secrets=[*_secrets(settings), *_url_password(target_url)])
    return asyncio.run(migrate_store(settings, target_url))


def run_check() -> int:
    """Run `animate-bot check` and return its exit code."""

    def load() -> Settings:
        """Load settings and mask both tokens in anything logged while checking."""
        settings = load_settings()
        # The table is the report: only warnings reach the log, unless DEBUG was asked for.
        level = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"
        configure_logging(level, secrets=_secrets(settings))
        return settings

    try:
        return asyncio.run(check.main(load))
    except KeyboardInterrupt:
        return check.EXIT_FAILED


def _secrets(settings: Settings) -> list[str]:
    """Both tokens (and DATABASE_URL's password), to be masked wherever they could appear."""
    secrets = [
        settings.discord_token.get_secret_value(),
    ]
    if settings.replicate_api_token is not None:
        secrets.append(settings.replicate_api_token.get_secret_value())
    if settings.database_url is not None:
        secrets += _url_password(settings.database_url.get_secret_value())
    return secrets


def _url_password(url: str) -> list[str]:
    """The password a database URL carries, if any (a malformed URL carries none we know)."""
    try:
        password = yarl.URL(url).password
    except ValueError:
        return []
    return [password] if password else []


if __name__ == "__main__":
    sys.exit(main())
