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
import re
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


# In the client's stream (asyncpg's named statements): a statement prepared with its text, and
# one bound to run. An UPDATE's answer comes after its commit (Sync ends the implicit
# transaction before ReadyForQuery is sent).
_PARSE_UPDATE = re.compile(rb"P.{4}(__asyncpg_\w+__)\x00UPDATE ", re.DOTALL)
_BIND = re.compile(rb"B.{4}\x00(__asyncpg_\w+__)\x00", re.DOTALL)
_READY = b"Z\x00\x00\x00\x05"


class Relay:
    """A TCP relay to the server, that a test cuts and restores: PostgreSQL going away."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._lose_update: asyncio.Event | None = None
        self.port = 0

    @classmethod
    async def to(cls, url: str) -> tuple[Relay, str]:
        """A started relay to the server of `url`, and the same URL through the relay."""
        parsed = yarl.URL(url)
        relay = cls(parsed.host or "127.0.0.1", parsed.port or 5432)
        await relay.start()
        return relay, str(parsed.with_port(relay.port))

    async def start(self) -> None:
        """Listen (again, on the same port once it had one)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every relayed connection."""
        self._drop()
        assert self._server is not None
        await self._server.wait_closed()

    def lose_next_update_answer(self) -> asyncio.Event:
        """Let the next UPDATE be made but drop its answer and cut: a commit whose answer is lost.

        The event is set once that happened.
        """
        self._lose_update = asyncio.Event()
        return self._lose_update

    def _drop(self) -> None:
        """Stop listening and close every relayed connection, at once."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pipe one client connection to the server and back."""
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers.update((writer, up_writer))
        updates: set[bytes] = set()  # this connection's statements that are UPDATEs
        losing: list[asyncio.Event] = []  # an UPDATE was sent: its answer is to be lost

        async def requests() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    updates.update(match[1] for match in _PARSE_UPDATE.finditer(data))
                    lose = self._lose_update
                    if lose is not None and any(m[1] in updates for m in _BIND.finditer(data)):
                        self._lose_update = None
                        losing.append(lose)
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.close()

        async def answers() -> None:
            with contextlib.suppress(OSError):
                while data := await up_reader.read(65536):
                    if losing and _READY in data:
                        self._drop()
                        losing[0].set()
                        break
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(requests(), answers())
        self._writers.difference_update((writer, up_writer))
