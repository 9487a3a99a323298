"""The soak's bot processes (one per shard) and its reads of their jobs table.

With one process the bot runs unsharded on SQLite or PostgreSQL, as a user starts it. With
N processes they share one PostgreSQL schema, process i running shard i of N; the soak
SIGKILLs and restarts one of them at a time. The jobs table is read through `JobsTable`,
from the SQLite file or from the run's PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import yarl

from bench.soak_options import Options
from tests.e2e.harness import BotProcess
from tests.fakes.discord import FakeDiscord, shard_of
from tests.postgres_server import CONNECT_TIMEOUT_SECONDS, server_url

UNFINISHED = "status NOT IN ('done', 'failed', 'canceled')"
ROW_COLUMNS = "id, status, prediction_id, request_message_id, result_message_id, error"


def spread_guilds(base: int, count: int, shards: int) -> list[int]:
    """Return `count` guild ids from `base` up, guild n on shard n % shards.

    With one shard these are base, base + 1, ... (the ids the soak always used).
    """
    guilds: list[int] = []
    guild = base
    for n in range(count):
        while shard_of(guild, shards) != n % shards:
            guild += 1 << 22  # the next id with the same low bits lands on the next shard
        guilds.append(guild)
        guild += 1
    return guilds


class BotExited(Exception):
    """A bot process ended while the soak started it."""


class BotCluster:
    """N bot processes, process i running shard i; one process is the unsharded bot."""

    def __init__(self, discord: FakeDiscord, processes: list[BotProcess]) -> None:
        self.discord = discord
        self.processes = processes
        self.up = [asyncio.Event() for _ in processes]

    @property
    def count(self) -> int:
        """How many processes (and shards) there are."""
        return len(self.processes)

    def shard_for(self, guild_id: int) -> int:
        """The shard, and so the process, that receives this guild's interactions."""
        return shard_of(guild_id, self.count)

    def run_of(self, shard: int) -> int:
        """Which start of the shard's process is running now; 0 while it is down."""
        return self.processes[shard].starts if self.up[shard].is_set() else 0

    async def start(self, shard: int) -> None:
        """Start one process and wait until its shard is connected and has its guilds.

        Raise BotExited when the process ends first (a soak cannot go on without it).
        """
        bot = self.processes[shard]
        ready_before = self.discord.ready_count
        identified_before = self._identifies(shard)
        await bot.start()
        assert bot.process is not None
        ready = asyncio.ensure_future(self._ready(shard, ready_before, identified_before))
        exited = asyncio.ensure_future(bot.process.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            bot.process = None
            raise BotExited(
                f"bot process {shard} (start {bot.starts}) exited with {exited.result()} "
                f"before it was ready; see {bot.log_path}"
            )
        exited.cancel()
        ready.result()
        self.up[shard].set()

    async def _ready(self, shard: int, ready_before: int, identified_before: int) -> None:
        """Wait until a new session of the shard is live and has its guilds."""
        await self.discord.wait_for(
            lambda: (
                self.discord.ready_count > ready_before
                and self._identifies(shard) > identified_before
            ),
            timeout=60,
        )
        if self.count == 1:
            await self.discord.wait_until_ready(timeout=60)
        else:
            await self.discord.wait_until_ready(timeout=60, shard_ids=[shard])

    async def start_all(self) -> None:
        """Start every process, one after the other (each identify waits for the last)."""
        for shard in range(self.count):
            await self.start(shard)

    async def kill(self, shard: int) -> None:
        """SIGKILL one process (marked down first: what is sent to it now goes unanswered)."""
        self.up[shard].clear()
        await self.processes[shard].stop(signal.SIGKILL)

    async def stop_all(self, sig: signal.Signals, timeout: float) -> list[int | None]:
        """Signal every running process at once; return their exit codes (None: not running)."""

        async def stop(shard: int) -> int | None:
            self.up[shard].clear()
            if self.processes[shard].process is None:
                return None
            return await self.processes[shard].stop(sig, timeout=timeout)

        return list(await asyncio.gather(*(stop(shard) for shard in range(self.count))))

    def log(self) -> str:
        """Everything every process printed so far."""
        return "".join(process.log() for process in self.processes)

    def _identifies(self, shard: int) -> int:
        """How many sessions the fake Discord accepted for this shard so far."""
        return sum(1 for _, shard_id, _ in self.discord.identifies if shard_id == shard)


def store_env(database_url: str | None, options: Options, shard: int) -> dict[str, str]:
    """The shared store, the process's shard, and a lease short enough for the soak."""
    env: dict[str, str] = {}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
        # A killed process's jobs wait out their lease before another takes them.
        env["JOB_LEASE_SECONDS"] = f"{options.lease_seconds:g}"
    if options.processes > 1:
        env["SHARD_COUNT"] = str(options.processes)
        env["SHARD_IDS"] = str(shard)
    return env


def webhook_env(enabled: bool) -> dict[str, str]:
    """With --webhooks, have a bot listen on a free port (deliveries to a killed bot fail)."""
    if not enabled:
        return {}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {
        "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks/replicate",
        "WEBHOOK_LISTEN_HOST": "127.0.0.1",
        "WEBHOOK_LISTEN_PORT": str(port),
    }


@dataclass(frozen=True)
class JobsSnapshot:
    """The whole jobs table at one moment: states, and each job's row by prompt."""

    states: Counter[str]
    rows: dict[str, tuple[object, ...]]


class JobsTable:
    """Reads of the bot's jobs table; a table the bot has not made yet reads as empty."""

    prompt = "json_extract(input_json, '$.prompt')"

    async def fetch(self, query: str) -> list[tuple[object, ...]]:
        """Run a read-only query; no rows while the table does not exist."""
        raise NotImplementedError

    async def prompts(self) -> set[str]:
        """The prompt of every job."""
        rows = await self.fetch(f"SELECT {self.prompt} FROM jobs")
        return {str(prompt) for (prompt,) in rows}

    async def unfinished(self) -> Counter[str]:
        """Count unfinished jobs by state."""
        rows = await self.fetch(
            f"SELECT status, count(*) FROM jobs WHERE {UNFINISHED} GROUP BY status"
        )
        return Counter({str(status): _int(count) for status, count in rows})

    async def snapshot(self) -> JobsSnapshot:
        """Every job's state and row, for the report and the cross-check."""
        rows = await self.fetch(f"SELECT {self.prompt}, {ROW_COLUMNS} FROM jobs ORDER BY id")
        states = Counter(str(row[2]) for row in rows)
        return JobsSnapshot(states, {str(row[0]): tuple(row[1:]) for row in rows})


class SQLiteJobs(JobsTable):
    """The jobs table in the bot's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def fetch(self, query: str) -> list[tuple[object, ...]]:
        """Run a query on the file (small and local: no thread needed)."""
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            try:
                return [tuple(row) for row in db.execute(query).fetchall()]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise


class PostgresJobs(JobsTable):
    """The jobs table in the run's PostgreSQL schema."""

    prompt = "(input_json::json ->> 'prompt')"

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, query: str) -> list[tuple[object, ...]]:
        """Run a query on a connection of its own (the schema comes with the URL)."""
        connection = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            return [tuple(record) for record in await connection.fetch(query)]
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await connection.close()


@dataclass(frozen=True)
class SoakSchema:
    """A schema of the soak's own on the tests' PostgreSQL server."""

    base_url: str
    name: str

    @property
    def url(self) -> str:
        """The URL the bots get: their connections use this schema."""
        return str(yarl.URL(self.base_url).update_query(search_path=self.name))

    @classmethod
    async def create(cls) -> SoakSchema:
        """Make a new, empty schema on the server the tests use (tests/postgres_server.py)."""
        try:
            base = await server_url()
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            raise SystemExit(f"bench.soak: --store postgres: {exc}") from None
        schema = cls(base, f"soak_{uuid.uuid4().hex[:16]}")
        await schema._execute(f'CREATE SCHEMA "{schema.name}"')
        return schema

    async def drop(self) -> None:
        """Drop the schema and everything in it."""
        await self._execute(f'DROP SCHEMA "{self.name}" CASCADE')

    async def _execute(self, statement: str) -> None:
        """Run one statement on a connection to the server's default schema."""
        admin = await asyncpg.connect(self.base_url, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            await admin.execute(statement)
        finally:
            await admin.close()


def _int(value: object) -> int:
    """A count from either driver as an int."""
    assert isinstance(value, int)
    return value
