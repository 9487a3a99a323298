"""`animate-bot migrate-store --to postgresql://...`: move the SQLite store into PostgreSQL."""

from __future__ import annotations

import sys
from typing import TextIO

from bot.app.settings import Settings
from bot.core import redaction
from bot.storage.base import SchemaTooNew, StorageUnavailable
from bot.storage.postgres import create_pool, server_name, url_problem
from bot.storage.transfer import TransferRefused, copy_sqlite_to_postgres

EXIT_OK, EXIT_FAILED, EXIT_BAD_ARGUMENTS = 0, 1, 2


async def migrate_store(settings: Settings, target_url: str, *, out: TextIO = sys.stdout) -> int:
    """Copy the SQLite database at DATABASE_PATH into an empty PostgreSQL; print one line."""
    problem = url_problem(target_url)
    if problem is not None:
        return _say(f"animate-bot: --to is invalid: {problem}", EXIT_BAD_ARGUMENTS)
    source, where = settings.database_path, f"PostgreSQL at {server_name(target_url)}"
    try:
        pool = await create_pool(target_url, size=1)
    except StorageUnavailable as exc:
        return _say(f"animate-bot: {exc}; check --to.", EXIT_FAILED)
    try:
        copied = await copy_sqlite_to_postgres(source, pool)
    except TransferRefused as exc:
        return _say(f"animate-bot: nothing copied: {exc}.", EXIT_FAILED)
    except SchemaTooNew as exc:
        return _say(f"animate-bot: nothing copied: {exc}", EXIT_FAILED)
    finally:
        await pool.close()
    rows = ", ".join(f"{count} {table}" for table, count in sorted(copied.items()))
    out.write(f"copied {source} into {where} ({rows}); set DATABASE_URL to it and start the bot\n")
    return EXIT_OK


def _say(line: str, code: int) -> int:
    """Print one line for the operator (credentials masked) and return the exit code."""
    print(redaction.redact(line), file=sys.stderr)
    return code
