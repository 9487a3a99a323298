"""Several real bot processes on one PostgreSQL schema, one per shard: claims are global, a
Cancel reaches whichever process runs the job, a killed process's jobs are taken over once
their leases expire, and a resharding keeps old buttons and queued jobs working."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import ALICE, BOB, World
from tests.e2e.harness import BotProcess, bot_environment
from tests.e2e.test_sharding import CHANNELS, GUILDS, fakes
from tests.e2e.test_startup import run_bot
from tests.fakes.discord import FakeDiscord, FakeMessage
from tests.fakes.predictions import Behaviour, FakePrediction, FakePredictionAPI
from tests.postgres_server import fresh_schema

LEASE_SECONDS = "3"
# GUILDS[0] and GUILDS[2] are on shard 0 of 2, GUILDS[1] on shard 1; of 3, each on its own.


@dataclass
class Cluster:
    """Bot processes sharing one schema, the fakes they talk to, and ways to look inside."""

    discord: FakeDiscord
    api: FakePredictionAPI
    url: str
    root: Path
    processes: dict[str, BotProcess] = field(default_factory=dict)
    holds: dict[str, asyncio.Event] = field(default_factory=dict)  # by prompt

    def __post_init__(self) -> None:
        self.api.behaviour_for = lambda data: Behaviour(hold=self.holds.get(str(data["prompt"])))
        self.world = World(self.discord, self.api, BotProcess({}, self.root))

    def add(self, name: str, shard_count: int, shard_ids: str, **env: str) -> BotProcess:
        """Make a bot process (not started) for these shards, in a folder of its own."""
        workdir = self.root / name
        workdir.mkdir(parents=True, exist_ok=True)
        extra = {
            "DATABASE_URL": self.url,
            "JOB_LEASE_SECONDS": LEASE_SECONDS,
            "SHARD_COUNT": str(shard_count),
            "SHARD_IDS": shard_ids,
            **env,
        }
        environment = bot_environment(
            self.discord, self.api, workdir / "bot.sqlite3", guild_ids=GUILDS.values(), extra=extra
        )
        self.processes[name] = BotProcess(environment, workdir)
        return self.processes[name]

    async def start(self, *names: str) -> None:
        """Start processes and wait until each one's shards are connected."""
        for name in names:
            await self.processes[name].start()
        wanted = [
            int(i) for name in names for i in self.processes[name].env["SHARD_IDS"].split(",")
        ]
        await self.discord.wait_until_ready(timeout=30, shard_ids=wanted)

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run one query on the shared schema."""
        connection = await asyncpg.connect(self.url)
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    async def row_reaches(self, job_id: int, timeout: float = 20, **columns: Any) -> Any:
        """Wait until a job's row has these values (other processes write it: polled)."""
        async with asyncio.timeout(timeout):
            while True:
                rows = await self.query("SELECT * FROM jobs WHERE id = $1", job_id)
                if rows and all(rows[0][name] == value for name, value in columns.items()):
                    return rows[0]
                await asyncio.sleep(0.05)

    def name_of(self, owner: str) -> str | None:
        """The process whose leases carry this owner (its pid is the owner's middle part)."""
        pid = owner.split(":")[-2] if owner.count(":") >= 2 else ""
        for name, process in self.processes.items():
            if process.process is not None and str(process.process.pid) == pid:
                return name
        return None

    async def runner_of(self, job_id: int) -> str | None:
        """The process holding a live claimed lease on a job, if any."""
        rows = await self.query(
            "SELECT owner FROM job_leases WHERE job_id = $1 AND claimed AND expires_at > now()",
            job_id,
        )
        return self.name_of(rows[0]["owner"]) if rows else None

    async def knows_of_processes(self, name: str, since: Any) -> None:
        """Wait until a process counted the live processes after `since` (database time)."""
        pid = self.processes[name].process
        assert pid is not None
        async with asyncio.timeout(10):
            while True:
                if await self.query(
                    "SELECT 1 FROM bot_processes WHERE owner LIKE $1 AND seen_at > $2",
                    f"%:{pid.pid}:%",
                    since,
                ):
                    return
                await asyncio.sleep(0.05)  # the row is another process's

    async def delivered_by(self, job_id: int) -> list[str]:
        """Wait until a process logs that it posted a job's result; return every one that did."""
        line = re.compile(rf"\bjob {job_id} (delivered|was already posted) as message ")
        async with asyncio.timeout(10):
            while True:
                found = [name for name, bot in self.processes.items() if line.search(bot.log())]
                if found:
                    return found
                await asyncio.sleep(0.05)  # the log is another process's file

    def results_of(self, request: FakeMessage) -> list[FakeMessage]:
        """Every visible message with a file that replies to a request."""
        return [
            message
            for message in self.discord.messages.values()
            if str((message.message_reference or {}).get("message_id")) == str(request.id)
            and message.attachments
            and not message.deleted
        ]

    def prediction(self, prompt: str) -> FakePrediction | None:
        """The only prediction made for a prompt (None before it is made)."""
        made = [p for p in self.api.predictions.values() if p.input.get("prompt") == prompt]
        assert len(made) <= 1, f"{len(made)} predictions were paid for {prompt!r}"
        return made[0] if made else None

    async def running(self, prompt: str) -> FakePrediction:
        """Wait until the prediction for a prompt is processing."""

        def processing() -> FakePrediction | None:
            """The prediction, once it runs."""
            made = self.prediction(prompt)
            return made if made is not None and made.status == "processing" else None

        found = await self.api.wait_for(processing)
        assert found is not None
        return found

    async def request(self, prompt: str, shard: int, **options: Any) -> FakeMessage:
        """Run /animate as Alice in the guild of `shard` (of three); return its status message."""
        interaction = await self.world.animate(
            prompt, guild=GUILDS[shard], channel=CHANNELS[shard], steps=5, **options
        )
        return await self.world.request_message(interaction)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """The fakes (three guilds, each shard its own identify bucket) on a fresh schema."""
    async with fresh_schema() as url, fakes(max_concurrency=3) as (discord, api):
        for guild in GUILDS.values():
            discord.add_member(guild, BOB, name="bob")
        world = Cluster(discord, api, url, tmp_path)
        try:
            yield world
        finally:
            for event in world.holds.values():
                event.set()
            codes = {
                name: await process.stop()
                for name, process in world.processes.items()
                if process.process is not None
            }
        problems = [f"{name} exited with {code}" for name, code in codes.items() if code != 0]
        problems += [
            f"{name} logged a traceback"
            for name, process in world.processes.items()
            if "Traceback" in process.log()
        ]
        if discord.unknown_routes:
            problems.append(f"unexpected Discord routes: {discord.unknown_routes}")
        logs = "".join(
            f"\n===== {name} =====\n{process.log()}" for name, process in world.processes.items()
        )
        assert not problems, "; ".join(problems) + logs


async def test_buttons_work_whichever_process_runs_the_job(cluster: Cluster) -> None:
    c = cluster
    a = c.add("a", 2, "0", MAX_RUNNING_TOTAL="2")
    c.add("b", 2, "1", MAX_RUNNING_TOTAL="2")
    # Alone, A claims the first job; then, its share of two processes full, it leaves the next
    # ones to B, though their servers are on A's shard.
    c.holds["blocker"] = asyncio.Event()
    await c.start("a")
    blocker = await c.request("blocker", 2)
    await c.running("blocker")
    assert await c.runner_of(1) == "a"
    await c.start("b")
    (now,) = await c.query("SELECT now()")
    await c.knows_of_processes("a", now[0])

    c.holds["canceled elsewhere"] = asyncio.Event()
    doomed = await c.request("canceled elsewhere", 0)
    prediction = await c.running("canceled elsewhere")
    assert await c.runner_of(2) == "b"
    pressed = time.monotonic()
    press = await c.discord.click(doomed, doomed.button("Cancel")["custom_id"], user_id=ALICE)
    await c.discord.wait_for(lambda: "Canceled" in doomed.content, timeout=5)
    assert time.monotonic() - pressed < 2, "the Cancel waited for polling"
    await c.discord.wait_for(lambda: press.original and "asked to cancel" in press.original.content)
    assert prediction.status == "canceled"
    await c.row_reaches(2, status="canceled")

    made = await c.world.result_for(await c.request("made elsewhere", 0, seed=41))
    await c.row_reaches(3, status="done")
    assert await c.delivered_by(3) == ["b"]
    click = await c.discord.click(made, made.button("Reroll")["custom_id"], user_id=BOB)
    await c.world.result_for(await c.world.request_message(click))
    await c.row_reaches(4, status="done", parent_job_id=3, requester_id=BOB)
    await c.discord.click(made, made.button("Delete")["custom_id"], user_id=ALICE)
    await c.discord.wait_for(lambda: made.deleted)
    await c.row_reaches(3, deleted=True)

    c.holds["blocker"].set()
    await c.world.result_for(blocker)
    assert await c.delivered_by(1) == ["a"]
    assert c.api.creates == 4, "a prediction was paid for twice"
    assert "Traceback" not in a.log()


async def test_a_killed_process_s_jobs_are_delivered_once_by_the_survivor(cluster: Cluster) -> None:
    c = cluster
    c.add("a", 2, "0", MAX_RUNNING_TOTAL="2")
    c.add("b", 2, "1", MAX_RUNNING_TOTAL="2")
    await c.start("a", "b")
    hold = asyncio.Event()
    prompts = [f"job {n}" for n in range(1, 7)]
    c.holds.update(dict.fromkeys(prompts, hold))
    # Two in each server, over both shards; two run (the total), four wait.
    requests = [await c.request(prompt, n % 3) for n, prompt in enumerate(prompts)]
    await c.api.wait_for(
        lambda: sum(p.status == "processing" for p in c.api.predictions.values()) == 2
    )
    running = [n for n in range(1, 7) if c.prediction(f"job {n}") is not None]
    victim = await c.runner_of(running[0])
    assert victim is not None
    survivor = "b" if victim == "a" else "a"
    orphans = [n for n in running if await c.runner_of(n) == victim]
    assert await c.processes[victim].stop(signal.SIGKILL) == -signal.SIGKILL
    hold.set()
    results = [await c.world.result_for(request, timeout=30) for request in requests]
    for n in range(1, 7):
        await c.row_reaches(n, status="done")
    for request in requests:
        assert len(c.results_of(request)) == 1, "a job was posted twice"
    assert len({result.id for result in results}) == 6
    assert c.api.creates == 6, "a prediction was paid for twice"
    assert [await c.delivered_by(n) for n in range(1, 7)] == [[survivor]] * 6
    assert orphans and "took over" in c.processes[survivor].log()
    assert c.api.most_at_once <= 2, "more predictions ran at once than MAX_RUNNING_TOTAL"


async def test_resharding_from_two_processes_to_three_keeps_buttons_and_queue(
    cluster: Cluster,
) -> None:
    c = cluster
    for shard in (0, 1):
        c.add(f"two-{shard}", 2, str(shard), MAX_RUNNING_TOTAL="1")
    await c.start("two-0", "two-1")
    made = await c.world.result_for(await c.request("before", 2, seed=17))
    await c.row_reaches(1, status="done")
    c.holds["long"] = asyncio.Event()
    running = await c.request("long", 0)
    await c.running("long")
    waiting = await c.request("waiting", 2)
    await c.row_reaches(3, status="queued")
    for shard in (0, 1):
        assert await c.processes[f"two-{shard}"].stop() == 0

    for shard in (0, 1, 2):
        c.add(f"three-{shard}", 3, str(shard), MAX_RUNNING_TOTAL="1")
    await c.start("three-0", "three-1", "three-2")
    assert sorted(c.discord.connected_shards()) == [(0, 3), (1, 3), (2, 3)]
    c.holds["long"].set()
    await c.world.result_for(running)
    await c.world.result_for(waiting)
    click = await c.discord.click(made, made.button("Reroll")["custom_id"], user_id=BOB)
    await c.world.result_for(await c.world.request_message(click))
    await c.row_reaches(4, status="done", parent_job_id=1)
    await c.discord.click(made, made.button("Delete")["custom_id"], user_id=ALICE)
    await c.discord.wait_for(lambda: made.deleted)
    await c.row_reaches(1, deleted=True)
    assert c.api.creates == 4, "a prediction was paid for twice"
    for request in (running, waiting):
        assert len(c.results_of(request)) == 1


async def test_a_process_on_a_shard_already_run_exits_1_with_one_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    first = c.add("a", 2, "0")
    await c.start("a")
    # Shard 1 is free, shard 0 is not: refused, and shard 1 is let go for its own process.
    code, output = await run_bot({**first.env, "SHARD_IDS": "1,0"}, tmp_path)
    assert code == 1, output
    assert output == (
        "animate-bot: another animate-bot process already runs shard 0 of 2 on this database; "
        "give each process its own SHARD_IDS.\n"
    )
    c.add("b", 2, "1")
    await c.start("b")
    await c.world.result_for(await c.request("still served", 1))
