"""Entry point: `python -m bot` or the `animate-bot` console script."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import aiohttp
import discord
import discord.http

from bot import redaction
from bot.client import AnimateBot, ExtensionsFailed, use_discord_endpoints
from bot.settings import Settings, SettingsError, load_settings
from bot.store import JobStore

log = logging.getLogger("bot")


def configure_logging(level: str, secrets: list[str] | None = None) -> None:
    """Log to stderr with timestamps and secrets masked, quieting discord.py below warnings."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-8s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # On the root handlers, so that every logger's records pass through the mask.
    redaction.install(logging.getLogger().handlers, secrets or [])
    if level != "DEBUG":
        logging.getLogger("discord").setLevel(logging.WARNING)


async def run(settings: Settings) -> int:
    """Run the bot until SIGTERM or SIGINT, then shut down leaving every job recorded."""
    use_discord_endpoints(settings)
    store = await JobStore.open(settings.database_path)
    try:
        async with aiohttp.ClientSession() as session:
            bot = AnimateBot(settings, session=session, store=store)
            return await _serve(bot, settings.discord_token.get_secret_value())
    finally:
        await store.close()


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
        if isinstance(error[0], ExtensionsFailed):
            print(f"animate-bot: {error[0]}; see the log above.", file=sys.stderr)
            return 1
        if isinstance(error[0], discord.LoginFailure):
            print("animate-bot: Discord refused DISCORD_TOKEN; check the token.", file=sys.stderr)
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


def main() -> int:
    """Read settings, then run; exit 2 on a configuration error."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"animate-bot: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level,
        secrets=[
            settings.discord_token.get_secret_value(),
            settings.replicate_api_token.get_secret_value(),
        ],
    )
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
