"""The soak's command line: load, faults, restarts, timings, the store and the processes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


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
    processes: int = 1
    store: str = "sqlite"
    lease_seconds: float = 5.0


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
    add(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the bot's store: its SQLite file, or a fresh schema of the tests' PostgreSQL",
    )
    add("--processes", type=int, default=1, help="bot processes, one shard each (1)")
    add("--lease-seconds", type=float, default=5.0, help="JOB_LEASE_SECONDS on PostgreSQL (5)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes > 1 and args.store != "postgres":
        parser.error("--processes > 1 needs --store postgres (SQLite serves one process)")
    if args.guilds < args.processes:
        parser.error("--guilds must be at least --processes (a guild on every shard)")
    if args.lease_seconds <= 0:
        parser.error("--lease-seconds must be positive")
    return Options(**{name: value for name, value in vars(args).items()})
