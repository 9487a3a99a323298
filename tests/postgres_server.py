"""A real PostgreSQL for the tests: the configured one, the machine's, or a throwaway cluster.

Found once per test process, in this order: ANIMATE_TEST_DATABASE_URL; the machine's server
at 127.0.0.1:5432 (trust auth, database `test`); a cluster started from the installed
binaries in a temp folder (stopped when the tests end). With none of these the PostgreSQL
tests skip, naming why, unless ANIMATE_REQUIRE_POSTGRES=1 (set by .ci/run) makes them fail.
Each test gets a schema of its own (`fresh_schema`), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import yarl

URL_ENV = "ANIMATE_TEST_DATABASE_URL"
REQUIRE_ENV = "ANIMATE_REQUIRE_POSTGRES"
MACHINE_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
CONNECT_TIMEOUT_SECONDS = 3
# initdb refuses to run as root: a throwaway cluster belongs to this user when we are root.
CLUSTER_USER = "postgres"


class _Found:
    """What the search found: a URL, or why there is none (decided once per process)."""

    url: str | None = None
    reason: str | None = None


async def server_url() -> str:
    """The base URL of the tests' PostgreSQL; skip (or fail, under .ci/run) without one."""
    if _Found.url is None and _Found.reason is None:
        _Found.url, _Found.reason = await _find()
    if _Found.url is not None:
        return _Found.url
    reason = f"no PostgreSQL for the tests: {_Found.reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A new, empty schema: yield a URL whose connections use it; drop it afterwards."""
    base = await server_url()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(base, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await admin.close()
    try:
        yield str(yarl.URL(base).update_query(search_path=schema))
    finally:
        admin = await asyncpg.connect(base, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await admin.close()


async def _find() -> tuple[str | None, str | None]:
    """Return (url, None) for a server that answers, or (None, why not)."""
    configured = os.environ.get(URL_ENV, "").strip()
    if configured:
        problem = await _answers(configured)
        if problem is None:
            return configured, None
        return None, f"{URL_ENV} does not answer ({problem})"
    problems = []
    for url in MACHINE_URLS:
        problem = await _answers(url)
        if problem is None:
            return url, None
        problems.append(problem)
    try:
        cluster = await asyncio.to_thread(start_throwaway_cluster)
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"127.0.0.1:5432 does not answer ({problems[0]}); {exc}"
    if cluster is None:
        return None, (
            f"127.0.0.1:5432 does not answer ({problems[0]}), {URL_ENV} is not set, and no "
            "PostgreSQL binaries (initdb, pg_ctl) are installed"
        )
    atexit.register(cluster.stop)
    return cluster.url, None


async def _answers(url: str) -> str | None:
    """None if the server at `url` takes a connection, else why not."""
    try:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return str(exc) or type(exc).__name__
    await connection.close()
    return None


@dataclass(frozen=True)
class ThrowawayCluster:
    """A PostgreSQL cluster of our own in a temp folder."""

    url: str
    folder: Path
    stop: Callable[[], None]


def start_throwaway_cluster() -> ThrowawayCluster | None:
    """Start a cluster in a temp folder on a free port (None: no binaries are installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = Path(found[-1]) if found else _on_path("initdb")
    if initdb is None:
        return None
    bindir = initdb.parent
    root = Path(tempfile.mkdtemp(prefix="animate-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, user=CLUSTER_USER)
        as_user = ["runuser", "-u", CLUSTER_USER, "--"]
    data, port = root / "data", _free_port()

    def run(*command: str | Path) -> None:
        """Run one of the cluster's commands as its owner."""
        subprocess.run([*as_user, *map(str, command)], check=True, capture_output=True)

    def stop() -> None:
        """Stop the cluster at once (if it started) and delete its folder."""
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)

    try:
        run(initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-o", options, "start")
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "test")
    except BaseException:
        stop()
        raise
    return ThrowawayCluster(f"postgresql://postgres@127.0.0.1:{port}/test", root, stop)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port where connections are refused, for the duration of the block: no server."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])  # bound, never listening


def _on_path(name: str) -> Path | None:
    """A program found on PATH."""
    where = shutil.which(name)
    return Path(where) if where else None


def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
