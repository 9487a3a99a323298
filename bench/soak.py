"""Soak: hundreds of /animate jobs through the fakes, with upstream faults and SIGKILL restarts.

    python -m bench.soak --jobs 300 --fault-rate 0.3 --restart-every 20 --seed 1
    python -m bench.soak --jobs 60 --store postgres --processes 3

Starts the fake Discord and the fake prediction API from tests/fakes on 127.0.0.1, runs the
real bot (`python -m bot`) against them, sends /animate from several members in several
guilds at a steady rate, fails a seeded share of every upstream request with a transient
fault, SIGKILLs the bot at a random moment in every window of N accepted jobs and starts it
again on the same database. Then it waits for every accepted job to end, stops the bot with
SIGTERM and counts, from what the fakes saw, what became of each job. Exit status 1 when a
job was lost, posted twice, delivered to the wrong request, or created upstream twice.

`--store postgres` runs the bot on a fresh schema of the tests' PostgreSQL server. With
`--processes N` (PostgreSQL only) N bot processes share it, process i running shard i of N,
and each kill SIGKILLs one of them at random; what is sent meanwhile to a guild of its shard
goes unanswered, as for a killed bot.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from bench.soak_cluster import (
    BotCluster,
    BotExited,
    JobsSnapshot,
    JobsTable,
    PostgresJobs,
    SoakSchema,
    SQLiteJobs,
    spread_guilds,
    store_env,
    webhook_env,
)
from bench.soak_options import Options, parse_options
from bench.soak_report import Kill, Outcome, Sent, report
from tests.e2e.harness import BotProcess, bot_environment
from tests.fakes.discord import FakeDiscord, FakeMessage
from tests.fakes.predictions import SAMPLE_PATH, Behaviour, FakePredictionAPI

GUILD_BASE = 700_000_000_000_000_000
CHANNEL_BASE = 710_000_000_000_000_000
MEMBER_BASE = 720_000_000_000_000_000
ACK_WINDOW = 3.0  # Discord's limit for answering an interaction
FOOTER = re.compile(r"^Job (?P<job>\d+) · prediction (?P<prediction>\S+)")
# Words only: the bot escapes markdown in prompts, and plain words survive it unchanged.
SUBJECTS = ("a red fox", "a paper boat", "a lighthouse", "an old tram", "a koi pond", "a comet")


class Soak:
    """Drives one soak run and gathers its figures."""

    def __init__(self, options: Options, workdir: Path, database_url: str | None = None) -> None:
        self.options = options
        self.workdir = workdir
        self.database_url = database_url
        # One process: the folder itself, as always; several: a folder (and log) each.
        self.workdirs = (
            [workdir]
            if options.processes == 1
            else [workdir / f"shard-{shard}" for shard in range(options.processes)]
        )
        self.database = workdir / "state" / "bot.sqlite3"
        self.jobs: JobsTable = (
            SQLiteJobs(self.database) if database_url is None else PostgresJobs(database_url)
        )
        self.snapshot = JobsSnapshot(Counter(), {})
        # Independent streams, so changing one knob does not reshuffle the others.
        self.rng_drive = random.Random(f"{options.seed}:drive")
        self.rng_kill = random.Random(f"{options.seed}:kill")
        self.rng_behaviour = random.Random(f"{options.seed}:behaviour")
        self.discord = FakeDiscord(recommended_shards=options.processes)
        sample = SAMPLE_PATH.read_bytes()[: options.sample_bytes]
        self.api = FakePredictionAPI(sample=sample)
        self.guilds = spread_guilds(GUILD_BASE, options.guilds, options.processes)
        self.channels = {guild: CHANNEL_BASE + n for n, guild in enumerate(self.guilds)}
        self.members = [MEMBER_BASE + n for n in range(options.members)]
        self.sent: list[Sent] = []
        self.kills: list[Kill] = []
        self.cluster = BotCluster(self.discord, [])
        self.started = 0.0
        self.drained = False
        self.exit_codes: list[int | None] = []

    # ---- setup ---------------------------------------------------------------------------

    def _behaviour(self, _input: dict[str, object]) -> Behaviour:
        """A short prediction of random length, some inside the Prefer: wait window, some not."""
        scale = self.options.time_scale
        return Behaviour(
            queue_time=self.rng_behaviour.uniform(0.1, 0.8) * scale,
            step_time=self.rng_behaviour.uniform(0.02, 0.1) * scale,
            frame_time=0.02 * scale,
        )

    async def _setup(self) -> None:
        """Start the fakes, populate the guilds and start the bot processes."""
        await self.discord.start()
        await self.api.start()
        for n, guild in enumerate(self.guilds):
            self.discord.add_guild(guild, name=f"Soak {n}", channel_ids=[self.channels[guild]])
            for m, member in enumerate(self.members):
                self.discord.add_member(guild, member, name=f"member{m}")
        self.api.behaviour_for = self._behaviour
        self.api.set_fault_rate(
            self.options.fault_rate,
            random.Random(f"{self.options.seed}:faults"),
            retry_after_max=self.options.retry_after_max,
            stall=self.options.stall,
        )
        processes = []
        for shard, workdir in enumerate(self.workdirs):
            workdir.mkdir(parents=True, exist_ok=True)
            env = bot_environment(
                self.discord,
                self.api,
                workdir / "state" / "bot.sqlite3",
                guild_ids=self.guilds,
                extra={
                    "MAX_RUNNING_PER_GUILD": str(self.options.per_guild),
                    "MAX_RUNNING_TOTAL": str(self.options.total),
                    # Admission limits are not under test here: every request should be queued.
                    "MAX_QUEUED_PER_MEMBER": "100",
                    "PREDICTION_WAIT_SECONDS": str(self.options.wait_seconds),
                    **webhook_env(self.options.webhooks),
                    **store_env(self.database_url, self.options, shard),
                },
            )
            processes.append(BotProcess(env, workdir))
        self.cluster = BotCluster(self.discord, processes)
        await self.cluster.start_all()

    # ---- load ----------------------------------------------------------------------------

    def accepted(self) -> list[Sent]:
        """Interactions the bot acknowledged."""
        return [s for s in self.sent if s.accepted]

    def _awaiting_answer(self) -> int:
        """Interactions sent to a running bot process that may still be acknowledged."""
        now = time.monotonic()
        return sum(
            1
            for s in self.sent
            if not s.interaction.callbacks
            and s.run != 0
            and s.run == self.cluster.run_of(s.shard)
            and now - s.sent_at < ACK_WINDOW
        )

    async def _drive(self) -> None:
        """Send /animate at a steady rate until enough jobs are accepted."""
        interval = 1.0 / self.options.rate
        while len(self.accepted()) + self._awaiting_answer() < self.options.jobs:
            if self.cluster.count == 1:
                # One bot: pause while it restarts. Several: the other shards go on, and a
                # guild of the restarting one is sent to all the same (and goes unanswered).
                await self.cluster.up[0].wait()
            index = len(self.sent)
            guild = self.rng_drive.choice(self.guilds)
            member = self.rng_drive.choice(self.members)
            prompt = (
                f"soak {index:04d} {self.rng_drive.choice(SUBJECTS)} "
                f"for member {self.members.index(member)} in guild {self.guilds.index(guild)}"
            )
            options: dict[str, object] = {"prompt": prompt, "steps": self.rng_drive.randint(5, 25)}
            if self.rng_drive.random() < 0.3:
                options["seed"] = self.rng_drive.randint(1, 2_147_483_647)
            shard = self.cluster.shard_for(guild)
            run = self.cluster.run_of(shard)
            interaction = await self.discord.invoke_command(
                "animate",
                options,
                guild_id=guild,
                channel_id=self.channels[guild],
                user_id=member,
            )
            self.sent.append(
                Sent(
                    index,
                    prompt,
                    guild,
                    self.channels[guild],
                    member,
                    interaction,
                    time.monotonic(),
                    run,
                    shard,
                )
            )
            await asyncio.sleep(interval)

    async def _kill_loop(self) -> None:
        """SIGKILL a bot process at a random moment in every window of N accepted; restart it."""
        every = self.options.restart_every
        if every <= 0:
            return
        window = 0
        while True:
            target = window * every + self.rng_kill.randint(1, every)
            if target > self.options.jobs:
                return
            await self.discord.wait_for(lambda t=target: len(self.accepted()) >= t, timeout=3600)
            if self.rng_kill.random() >= self.options.kill_on_ack:
                # Land somewhere in the next couple of job intervals, not on an acceptance.
                await asyncio.sleep(self.rng_kill.uniform(0, 2.0 / self.options.rate))
            # Otherwise kill the instant the acknowledgement arrives, while the request is
            # being recorded: a moment uniform timing almost never hits.
            count = self.cluster.count
            await self._kill_and_restart(self.rng_kill.randrange(count) if count > 1 else 0)
            window += 1

    async def _kill_and_restart(self, shard: int) -> None:
        """SIGKILL a shard's process, note what it left behind, start it again (same store)."""
        await self.cluster.kill(shard)
        unanswered = sum(1 for s in self.sent if not s.interaction.callbacks)
        stored = await self.jobs.prompts()
        # The other processes run on: only the killed one's acknowledgements are its to store.
        unstored = [
            s.prompt for s in self.accepted() if s.shard == shard and s.prompt not in stored
        ]
        states = await self.jobs.unfinished()
        self.kills.append(Kill(len(self.accepted()), states, unanswered, unstored, shard))
        await self.cluster.start(shard)

    async def _report_progress(self) -> None:
        """Print a line of progress every ten seconds."""
        while True:
            await asyncio.sleep(10)
            outcomes = self.outcomes()
            ended = sum(1 for s in self.accepted() if outcomes[s.prompt].ended)
            print(
                f"  t={time.monotonic() - self.started:5.0f}s sent {len(self.sent)} "
                f"accepted {len(self.accepted())}/{self.options.jobs} ended {ended} "
                f"kills {len(self.kills)} predictions {self.api.creates}",
                file=sys.stderr,
                flush=True,
            )

    async def _drain(self) -> None:
        """Wait until every accepted job has reached an end, or the time-out passes."""
        deadline = time.monotonic() + self.options.drain_timeout
        while time.monotonic() < deadline:
            outcomes = self.outcomes()
            if all(outcomes[s.prompt].ended for s in self.accepted()):
                self.drained = True
                return
            await asyncio.sleep(0.5)

    async def run(self) -> None:
        """Set up, drive the load with kills, drain, stop the bots with SIGTERM, read the store."""
        self.started = time.monotonic()
        try:
            await self._setup()
            await self._load()
        finally:
            self.exit_codes = await self.cluster.stop_all(signal.SIGTERM, timeout=30)
            await self.api.close()
            await self.discord.close()
        self.snapshot = await self.jobs.snapshot()

    async def _load(self) -> None:
        """Drive the load with kills, then wait for the last jobs to end."""
        progress = asyncio.create_task(self._report_progress())
        killer = asyncio.create_task(self._kill_loop())
        driver = asyncio.create_task(self._drive())
        try:
            await asyncio.wait({driver, killer}, return_when=asyncio.FIRST_COMPLETED)
            if killer.done() and killer.exception() is not None:
                driver.cancel()  # a restart failed: the load would wait for it forever
                killer.result()
            await driver
            # A kill drawn for the last window may still be due.
            await asyncio.wait_for(killer, timeout=60)
            await self._drain()
        finally:
            driver.cancel()
            killer.cancel()
            progress.cancel()

    # ---- counting ------------------------------------------------------------------------

    def _bot_messages(self) -> Iterator[FakeMessage]:
        """Every live message the bot wrote in a guild channel."""
        for message in self.discord.messages.values():
            if message.author_id == self.discord.bot_user_id and not message.deleted:
                yield message

    def outcomes(self) -> dict[str, Outcome]:
        """Map each sent prompt to what the fakes show for it."""
        outcomes: dict[str, Outcome] = defaultdict(Outcome)
        by_original = {s.interaction.original.id: s for s in self.sent if s.interaction.original}
        by_prompt = {s.prompt: s for s in self.sent}
        for message in self._bot_messages():
            footer = _footer(message)
            if footer is not None:
                _job, prediction_id = footer
                prediction = self.api.predictions.get(prediction_id)
                prompt = str(prediction.input.get("prompt")) if prediction else "?"
                outcome = outcomes[prompt]
                outcome.results.append(message)
                reference = (message.message_reference or {}).get("message_id")
                replied_to = by_original.get(int(reference)) if reference else None
                if replied_to is not None and replied_to.prompt != prompt:
                    outcome.misdelivered += 1
            elif "❌" in message.content:
                # A failure shown on the request, or posted alone when that message was gone.
                sent = by_original.get(message.id) or next(
                    (s for p, s in by_prompt.items() if p in message.content), None
                )
                if sent is not None:
                    outcomes[sent.prompt].failed = True
            elif "🚫 Canceled" in message.content and message.id in by_original:
                outcomes[by_original[message.id].prompt].canceled = True
        return outcomes

    def duplicate_creates(self) -> Counter[str]:
        """Predictions created upstream beyond the first for the same input (incl. seed)."""
        per_input = Counter(
            json.dumps(p.input, sort_keys=True) for p in self.api.predictions.values()
        )
        return Counter({key: n - 1 for key, n in per_input.items() if n > 1})

    def database_states(self) -> Counter[str]:
        """Every job by state in the bot's database at the end, for the cross-check."""
        return self.snapshot.states

    def database_job(self, prompt: str) -> tuple[object, ...] | None:
        """The database row of the job with this prompt at the end, if any."""
        return self.snapshot.rows.get(prompt)


def _footer(message: FakeMessage) -> tuple[int, str] | None:
    """The job id and prediction id named in a result's embed footer, if it is a result."""
    for embed in message.embeds:
        match = FOOTER.match(str((embed.get("footer") or {}).get("text") or ""))
        if match:
            return int(match["job"]), match["prediction"]
    return None


async def main_async(options: Options) -> int:
    """Run a soak in a temp folder and print its figures."""
    schema = await SoakSchema.create() if options.store == "postgres" else None
    workdir = Path(tempfile.mkdtemp(prefix="animate-soak-"))
    soak = Soak(options, workdir, schema.url if schema else None)
    began = time.monotonic()
    try:
        await soak.run()
    except BaseException:
        print(f"work folder kept: {workdir}", file=sys.stderr)
        if schema is not None:
            print(f"schema kept: {schema.name} ({schema.base_url})", file=sys.stderr)
        raise
    finally:
        wall = time.monotonic() - began
    status = report(soak, wall)
    if status or options.keep:
        logs = "bot.log" if options.processes == 1 else "shard-*/bot.log"
        database = ", state/bot.sqlite3" if schema is None else ""
        print(f"work folder kept: {workdir} ({logs}{database})")
        if schema is not None:
            print(f"schema kept: {schema.name} ({schema.url})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        if schema is not None:
            await schema.drop()
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.soak`."""
    options = parse_options(argv)
    try:
        return asyncio.run(main_async(options))
    except BotExited as exc:
        print(f"bench.soak: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
