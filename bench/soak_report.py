"""The soak's report: what became of every accepted job, as a table, and the exit status."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.fakes.discord import FakeInteraction, FakeMessage
from tests.fakes.predictions import FakePredictionAPI

if TYPE_CHECKING:
    from bench.soak import Soak

DEFERRED = 5  # interaction callback type of an acknowledgement that a reply will follow


@dataclass
class Sent:
    """One /animate interaction the soak sent, and to which run of its shard's bot process."""

    index: int
    prompt: str
    guild_id: int
    channel_id: int
    user_id: int
    interaction: FakeInteraction
    sent_at: float
    run: int  # 0: the process of its shard was down when it was sent
    shard: int = 0

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
    """One SIGKILL: when it landed, which shard's process, what the database held then."""

    accepted: int
    states: Counter[str]
    unanswered: int
    unstored: list[str] = field(default_factory=list)  # acknowledged, yet no job recorded
    shard: int = 0


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
    tracebacks = soak.cluster.log().count("Traceback")
    api_total = sum(kinds.values())

    rows: list[tuple[str, str]] = [
        ("interactions sent", str(len(soak.sent))),
        ("  accepted (acknowledged)", str(len(accepted))),
        ("  refused at once", str(refused)),
        (
            "  never acknowledged (bot killed)",
            str(sum(1 for s in soak.sent if not s.interaction.callbacks)),
        ),
        *(
            # Sent on while another shard's process ran: its guild's process was down.
            [("    of them sent while its shard was down", str(sum(s.run == 0 for s in soak.sent)))]
            if options.processes > 1
            else []
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
        *(
            [("  by shard", _counter_text(Counter(f"#{k.shard}" for k in soak.kills)) or "-")]
            if options.processes > 1
            else []
        ),
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
        ("bot processes", _processes_text(options.processes)),
        (
            "store",
            options.store
            + (f" (JOB_LEASE_SECONDS={options.lease_seconds:g})" if soak.database_url else ""),
        ),
        ("bot exit code on SIGTERM", ", ".join(str(code) for code in soak.exit_codes) or "-"),
        ("tracebacks in the bot log", str(tracebacks)),
        ("all jobs ended before the time-out", "yes" if soak.drained else "NO"),
        ("wall time", f"{wall:.0f} s"),
    ]
    title = (
        f"soak: {options.jobs} jobs, fault rate {options.fault_rate:.0%}, "
        f"SIGKILL every {options.restart_every or '-'} accepted, seed {options.seed}, "
        f"{options.guilds} guilds x {options.members} members, {options.rate:g} jobs/s, "
        f"time scale {options.time_scale:g}, "
        f"{_processes_text(options.processes)} on {options.store}"
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


def _processes_text(processes: int) -> str:
    """How many bot processes ran, and how they split the shards."""
    if processes == 1:
        return "1 process"
    return f"{processes} processes (SHARD_COUNT={processes}, one shard each)"


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
