"""One bot process per SQLite file, held for the process's life.

A process on SQLite resumes every unfinished job it finds at start, so two processes on one
file would both follow, and both post, the same jobs: a second one is refused. The kernel
drops the lock when the process dies, kill -9 included, so a restart never finds a stale one.
(Processes on PostgreSQL share its jobs under leases instead: bot/storage/postgres_leases.py.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

# The advisory lock's class id ("anib"); its object id is the schema's hash, so stores in
# other schemas of one database (the tests' schemas) do not exclude each other.
PROCESS_LOCK_CLASS = 0x616E6962
CONNECT_TIMEOUT_SECONDS = 10


class StoreInUse(Exception):
    """Another bot process holds this store."""


class ProcessLock(Protocol):
    """A held lock on the store; released by `release` or by the process's end."""

    async def release(self) -> None:
        """Let another process take the store."""
        ...


class SQLiteProcessLock:
    """An exclusive `flock` on a file beside the database."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    @classmethod
    def take(cls, database_path: Path) -> SQLiteProcessLock:
        """Lock `<database>.lock`, or raise StoreInUse if another process holds it."""
        database_path.parent.mkdir(parents=True, exist_ok=True)
        path = database_path.with_name(database_path.name + ".lock")
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise StoreInUse(f"another animate-bot process is running on {database_path}") from None
        except BaseException:
            os.close(descriptor)
            raise
        return cls(descriptor)

    async def release(self) -> None:
        """Unlock and close the lock file."""
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor drops the flock
            self._descriptor = None
