"""Soak: hundreds of /animate jobs through the fakes, with upstream faults and SIGKILL restarts.

    python -m bench.soak --jobs 300 --fault-rate 0.3 --restart-every 20 --seed 1

Starts the fake Discord and the fake prediction API from tests/fakes on 127.0.0.1, runs the
real bot (`python -m bot`) against them, sends /animate from several members in several
guilds at a steady rate, fails a seeded share of every upstream request with a transient
fault, SIGKILLs the bot at a random moment in every window of N accepted jobs and starts it
again on the same database. Then it waits for every accepted job to end, stops the bot with
SIGTERM and counts, from what the fakes saw, what became of each job. Exit status 1 when a
job was lost, posted twice, delivered to the wrong request, or created upstream twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.harness import BotProcess, bot_environment
from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeMessage
from tests.fakes.predictions import SAMPLE_PATH, Behaviour, FakePredictionAPI

GUILD_BASE = 700_000_000_000_000_000
CHANNEL_BASE = 710_000_000_000_000_000
MEMBER_BASE = 720_000_000_000_000_000
DEFERRED = 5  # interaction callback type of an acknowledgement that a reply will follow
ACK_WINDOW = 3.0  # Discord's limit for answering an interaction
FOOTER = re.compile(r"^Job (?P<job>\d+) · prediction (?P<prediction>\S+)")
# Words only: the bot escapes markdown in prompts, and plain words survive it unchanged.
SUBJECTS = ("a red fox", "a paper boat", "a lighthouse", "an old tram", "a koi pond", "a comet")


@dataclass(frozen=True)
class Options:
    """What to run: load, faults, restarts and timings."""

    jobs: int
    fault_rate: float
    restart_every: int
    seed: int
    guilds: int
    members: int
    rate: float
    time_scale: float
    per_guild: int
    total: int
    wait_seconds: int
    retry_after_max: float
    stall: float
    drain_timeout: float
    kill_on_ack: float
    sample_bytes: int
    keep: bool
    webhooks: bool = False


@dataclass
class Sent:
    """One /animate interaction the soak sent, and to which run of the bot."""

    index: int
    prompt: str
    guild_id: int
    channel_id: int
    user_id: int
    interaction: FakeInteraction
    sent_at: float
    run: int

    @property
    def accepted(self) -> bool:
        """The bot acknowledged it with a deferred reply (the public "thinking" message)."""
        return any(c.get("type") == DEFERRED for c in self.interaction.callbacks)

    @property
    def refused(self) -> bool:
        """The bot answered at once without queueing (an ephemeral refusal)."""
        return bool(self.interaction.callbacks) and not self.accepted


@dataclass
class Kill:
    """One SIGKILL: when it landed and what the database held at that moment."""

    accepted: int
    states: Counter[str]
    unanswered: int
    unstored: list[str] = field(default_factory=list)  # acknowledged, yet no job recorded


@dataclass
class Outcome:
    """What the fakes show for one accepted job."""

    results: list[FakeMessage] = field(default_factory=list)
    failed: bool = False
    canceled: bool = False
    misdelivered: int = 0

    @property
    def ended(self) -> bool:
        """The member can see an end: a result, a failure or a cancellation."""
        return bool(self.results) or self.failed or self.canceled


class Soak:
    """Drives one soak run and gathers its figures."""

    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.database = workdir / "state" / "bot.sqlite3"
        # Independent streams, so changing one knob does not reshuffle the others.
        self.rng_drive = random.Random(f"{options.seed}:drive")
        self.rng_kill = random.Random(f"{options.seed}:kill")
        self.rng_behaviour = random.Random(f"{options.seed}:behaviour")
        self.discord = FakeDiscord()
        sample = SAMPLE_PATH.read_bytes()[: options.sample_bytes]
        self.api = FakePredictionAPI(sample=sample)
        self.guilds = [GUILD_BASE + n for n in range(options.guilds)]
        self.channels = {guild: CHANNEL_BASE + n for n, guild in enumerate(self.guilds)}
        self.members = [MEMBER_BASE + n for n in range(options.members)]
        self.sent: list[Sent] = []
        self.kills: list[Kill] = []
        self.bot: BotProcess | None = None
        self.bot_up = asyncio.Event()
        self.started = 0.0
        self.drained = False
        self.exit_code: int | None = None

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
        """Start the fakes, populate the guilds and start the bot."""
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
        env = bot_environment(
            self.discord,
            self.api,
            self.database,
            guild_ids=self.guilds,
            extra={
                "MAX_RUNNING_PER_GUILD": str(self.options.per_guild),
                "MAX_RUNNING_TOTAL": str(self.options.total),
                # Admission limits are not under test here: every request should be queued.
                "MAX_QUEUED_PER_MEMBER": "100",
                "PREDICTION_WAIT_SECONDS": str(self.options.wait_seconds),
                **self._webhook_env(),
            },
        )
        self.bot = BotProcess(env, self.workdir)
        await self._start_bot()

    def _webhook_env(self) -> dict[str, str]:
        """With --webhooks, have the bot listen on a free port (deliveries to a killed bot fail)."""
        if not self.options.webhooks:
            return {}
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return {
            "PUBLIC_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks/replicate",
            "WEBHOOK_LISTEN_HOST": "127.0.0.1",
            "WEBHOOK_LISTEN_PORT": str(port),
        }

    async def _start_bot(self) -> None:
        """Start the bot and wait until it is connected and has its guilds."""
        assert self.bot is not None
        before = self.discord.ready_count
        await self.bot.start()
        await self.discord.wait_for(lambda: self.discord.ready_count > before, timeout=60)
        await self.discord.wait_until_ready(timeout=60)
        self.bot_up.set()

    # ---- load ----------------------------------------------------------------------------

    def accepted(self) -> list[Sent]:
        """Interactions the bot acknowledged."""
        return [s for s in self.sent if s.accepted]

    def _awaiting_answer(self) -> int:
        """Interactions sent to the running bot that may still be acknowledged."""
        assert self.bot is not None
        now = time.monotonic()
        return sum(
            1
            for s in self.sent
            if not s.interaction.callbacks
            and s.run == self.bot.starts
            and now - s.sent_at < ACK_WINDOW
        )

    async def _drive(self) -> None:
        """Send /animate at a steady rate until enough jobs are accepted."""
        assert self.bot is not None
        interval = 1.0 / self.options.rate
        while len(self.accepted()) + self._awaiting_answer() < self.options.jobs:
            await self.bot_up.wait()
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
                    self.bot.starts,
                )
            )
            await asyncio.sleep(interval)

    async def _kill_loop(self) -> None:
        """SIGKILL the bot at a random moment in every window of N accepted jobs; restart it."""
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
            await self._kill_and_restart()
            window += 1

    async def _kill_and_restart(self) -> None:
        """SIGKILL the bot, note what it left behind, start it again on the same database."""
        assert self.bot is not None
        self.bot_up.clear()
        await self.bot.stop(signal.SIGKILL)
        unanswered = sum(1 for s in self.sent if not s.interaction.callbacks)
        stored = self._db_prompts()
        unstored = [s.prompt for s in self.accepted() if s.prompt not in stored]
        self.kills.append(Kill(len(self.accepted()), self._db_states(), unanswered, unstored))
        await self._start_bot()

    def _db_prompts(self) -> set[str]:
        """The prompt of every job in the bot's database (read while the bot is down)."""
        if not self.database.exists():
            return set()
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            rows = db.execute("SELECT json_extract(input_json, '$.prompt') FROM jobs").fetchall()
        return {str(prompt) for (prompt,) in rows}

    def _db_states(self) -> Counter[str]:
        """Count unfinished jobs by state in the bot's database (read while the bot is down)."""
        if not self.database.exists():
            return Counter()
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            rows = db.execute(
                "SELECT status, count(*) FROM jobs "
                "WHERE status NOT IN ('done', 'failed', 'canceled') GROUP BY status"
            ).fetchall()
        return Counter({str(status): int(count) for status, count in rows})

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
        """Set up, drive the load with kills, drain, and stop the bot with SIGTERM."""
        self.started = time.monotonic()
        await self._setup()
        progress = asyncio.create_task(self._report_progress())
        killer = asyncio.create_task(self._kill_loop())
        try:
            await self._drive()
            # A kill drawn for the last window may still be due.
            await asyncio.wait_for(killer, timeout=60)
            await self._drain()
        finally:
            killer.cancel()
            progress.cancel()
            if self.bot is not None and self.bot.process is not None:
                self.exit_code = await self.bot.stop(signal.SIGTERM, timeout=30)
            await self.api.close()
            await self.discord.close()

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
        """Every job by state in the bot's database, for the cross-check."""
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            rows = db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        return Counter({str(status): int(count) for status, count in rows})

    def database_job(self, prompt: str) -> tuple[object, ...] | None:
        """The database row of the job with this prompt, if any."""
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            return db.execute(
                "SELECT id, status, prediction_id, request_message_id, result_message_id, error "
                "FROM jobs WHERE json_extract(input_json, '$.prompt') = ?",
                (prompt,),
            ).fetchone()


def _footer(message: FakeMessage) -> tuple[int, str] | None:
    """The job id and prediction id named in a result's embed footer, if it is a result."""
    for embed in message.embeds:
        match = FOOTER.match(str((embed.get("footer") or {}).get("text") or ""))
        if match:
            return int(match["job"]), match["prediction"]
    return None


def report(soak: Soak, wall: float) -> int:
    """Print the figures as a table and return the exit status."""
    options = soak.options
    accepted = soak.accepted()
    refused = sum(1 for s in soak.sent if s.refused)
    outcomes = soak.outcomes()
    per_job = [outcomes[s.prompt] for s in accepted]
    delivered = sum(1 for o in per_job if o.results)
    duplicated = sum(1 for o in per_job if len(o.results) > 1)
    failed = sum(1 for o in per_job if o.failed and not o.results)
    canceled = sum(1 for o in per_job if o.canceled and not o.results and not o.failed)
    lost = [s for s in accepted if not outcomes[s.prompt].ended]
    misdelivered = sum(o.misdelivered for o in per_job)
    stale_status = sum(
        1
        for s in accepted
        if outcomes[s.prompt].results
        and "Done" not in (s.interaction.original.content if s.interaction.original else "")
    )
    accepted_prompts = {s.prompt for s in accepted}
    stray_results = sum(
        len(o.results) for prompt, o in outcomes.items() if prompt not in accepted_prompts
    )
    duplicate_creates = soak.duplicate_creates()
    kinds = soak.api.requests_by_kind()
    faults = soak.api.random_faults
    fault_counts: Counter[str] = Counter()
    if faults is not None:
        for (_kind, name), count in faults.counts.items():
            fault_counts[name] += count
    caught: Counter[str] = Counter()
    for kill in soak.kills:
        caught.update(kill.states)
    tracebacks = soak.bot.log().count("Traceback") if soak.bot else 0
    api_total = sum(kinds.values())

    rows: list[tuple[str, str]] = [
        ("interactions sent", str(len(soak.sent))),
        ("  accepted (acknowledged)", str(len(accepted))),
        ("  refused at once", str(refused)),
        (
            "  never acknowledged (bot killed)",
            str(sum(1 for s in soak.sent if not s.interaction.callbacks)),
        ),
        ("delivered", str(delivered)),
        ("failed with a message", str(failed)),
        ("canceled", str(canceled)),
        ("LOST", str(len(lost))),
        ("DUPLICATED (result posted twice)", str(duplicated)),
        ("DUPLICATE CREATES", str(sum(duplicate_creates.values()))),
        ("MISDELIVERED (reply to wrong request)", str(misdelivered)),
        ("results for unaccepted requests", str(stray_results)),
        ("delivered, request still not 'Done'", str(stale_status)),
        ("SIGKILL restarts", str(len(soak.kills))),
        ("  unfinished jobs caught by kills", _counter_text(caught)),
        ("predictions created", str(soak.api.creates)),
        (
            "API requests",
            f"{api_total} ({_counter_text(kinds)}, {api_total / max(1, len(accepted)):.1f}/job)",
        ),
        (
            "faults injected",
            f"{faults.total if faults else 0} "
            f"({(faults.total if faults else 0) / max(1, api_total):.1%} of requests)",
        ),
        ("  by kind", _counter_text(fault_counts) or "-"),
        ("webhook deliveries (answers)", _webhook_text(soak.api)),
        ("bot exit code on SIGTERM", str(soak.exit_code)),
        ("tracebacks in the bot log", str(tracebacks)),
        ("all jobs ended before the time-out", "yes" if soak.drained else "NO"),
        ("wall time", f"{wall:.0f} s"),
    ]
    title = (
        f"soak: {options.jobs} jobs, fault rate {options.fault_rate:.0%}, "
        f"SIGKILL every {options.restart_every or '-'} accepted, seed {options.seed}, "
        f"{options.guilds} guilds x {options.members} members, {options.rate:g} jobs/s, "
        f"time scale {options.time_scale:g}"
        + (f", {options.kill_on_ack:.0%} of kills on an ack" if options.kill_on_ack else "")
    )
    width = max(len(name) for name, _ in rows) + 2
    print(title)
    print("-" * min(100, max(len(title), width + 30)))
    for name, value in rows:
        print(f"{name:<{width}}{value}")
    print(f"database: {_counter_text(soak.database_states())}")
    reasons = Counter(
        _status_line(s)
        for s in accepted
        if outcomes[s.prompt].failed and not outcomes[s.prompt].results
    )
    for reason, count in reasons.most_common():
        print(f"failed x{count}: {reason}")
    for s in lost[:20]:
        print(f"lost: #{s.index} {s.prompt!r} interaction {s.interaction.id}")
        for number, kill in enumerate(soak.kills, start=1):
            if s.prompt in kill.unstored:
                print(
                    f"      acknowledged, then SIGKILL #{number} landed before the job was "
                    f"stored (no row in the database right after the kill)"
                )
                break
        print(f"      request message: {_status_line(s)}")
        print(f"      database row: {soak.database_job(s.prompt)}")
        predictions = [
            f"{p.id} {p.status}"
            for p in soak.api.predictions.values()
            if p.input.get("prompt") == s.prompt
        ]
        print(f"      predictions: {predictions or 'none'}")
    for s in accepted:
        if len(outcomes[s.prompt].results) > 1:
            ids = [m.id for m in outcomes[s.prompt].results]
            print(f"duplicated: #{s.index} {s.prompt!r} posted as {ids}")
    for key, extra in duplicate_creates.items():
        print(f"duplicate create: {extra + 1} predictions for input {key}")
    bad = len(lost) + duplicated + sum(duplicate_creates.values()) + misdelivered
    return 1 if bad or not soak.drained else 0


def _status_line(sent: Sent) -> str:
    """The last line of a request's status message, or what stands in for it."""
    original = sent.interaction.original
    if original is None:
        return "(none)"
    return original.content.splitlines()[-1] if original.content else "(still thinking)"


def _counter_text(counter: Counter[str]) -> str:
    """Write a counter as `name n, name n`, largest first."""
    return ", ".join(f"{name} {count}" for name, count in counter.most_common())


def _webhook_text(api: FakePredictionAPI) -> str:
    """How the bot answered the fake's webhook deliveries (0: no answer, it was down)."""
    deliveries = api.webhook_deliveries
    if not deliveries:
        return "-"
    answers = Counter(str(d.answers[-1]) if d.answers else "pending" for d in deliveries)
    return f"{len(deliveries)} ({_counter_text(answers)})"


def parse_options(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak the bot with faults and SIGKILL restarts; print what became of each job.",
    )
    add = parser.add_argument
    add("--jobs", type=int, default=300, help="jobs to get accepted (default 300)")
    add("--fault-rate", type=float, default=0.3, help="share of API requests failed (0.3)")
    add("--restart-every", type=int, default=20, help="SIGKILL once per N accepted; 0: never")
    add("--seed", type=int, default=1, help="seed of every random choice (1)")
    add("--guilds", type=int, default=4, help="guilds, one channel each (4)")
    add("--members", type=int, default=5, help="members in every guild (5)")
    add("--rate", type=float, default=2.0, help="/animate interactions sent per second (2)")
    add("--time-scale", type=float, default=1.0, help="multiplier of prediction durations (1)")
    add("--per-guild", type=int, default=2, help="MAX_RUNNING_PER_GUILD for the bot (2)")
    add("--total", type=int, default=8, help="MAX_RUNNING_TOTAL for the bot (8)")
    add("--wait-seconds", type=int, default=1, help="PREDICTION_WAIT_SECONDS for the bot (1)")
    add("--retry-after-max", type=float, default=2.0, help="largest Retry-After sent (2 s)")
    add("--stall", type=float, default=1.0, help="longest stall before a hang-up (1 s)")
    add("--drain-timeout", type=float, default=300.0, help="wait for the last jobs (300 s)")
    add("--kill-on-ack", type=float, default=0.0, help="share of kills right on an ack (0)")
    add("--sample-bytes", type=int, default=64 * 1024, help="size of each output file (64 KiB)")
    add("--keep", action="store_true", help="keep the work folder (database, bot log)")
    add("--webhooks", action="store_true", help="run the bot with PUBLIC_WEBHOOK_URL set")
    args = parser.parse_args(argv)
    return Options(**{name: value for name, value in vars(args).items()})


async def main_async(options: Options) -> int:
    """Run a soak in a temp folder and print its figures."""
    workdir = Path(tempfile.mkdtemp(prefix="animate-soak-"))
    soak = Soak(options, workdir)
    began = time.monotonic()
    try:
        await soak.run()
    finally:
        wall = time.monotonic() - began
    status = report(soak, wall)
    if status or options.keep:
        print(f"work folder kept: {workdir} (bot.log, state/bot.sqlite3)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.soak`."""
    return asyncio.run(main_async(parse_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
