"""The throughput benchmark on PostgreSQL: --processes workers sharing one fresh schema.

The backlog is written into the schema's `jobs` table (guild ids spread over the shards as
Discord's are), the claim is timed against it, then one fake API and N workers start; the
driver counts the jobs done in the database, SIGKILLs the last worker once --kill-after were
delivered, and ends the run once --deliveries were and every job the killed one held has
been taken over. Take-over is timed three ways, all from the kill, all in real seconds: the
lease held by a survivor (read in the database every 0.1 s), the job launched by a survivor
(its scheduler's claim or resume hook), and the survivor's first poll of its prediction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from bench.rig import STEPS
from bot.core.jobs import GenerationRequest
from bot.core.shared_queue import CLAIM_BATCH
from bot.storage.leases import ClaimLimits
from bot.storage.postgres import PostgresStore, create_pool
from bot.storage.postgres_leases import PostgresLeases
from bot.storage.postgres_membership import PostgresMembership
from tests.postgres_server import fresh_schema

STALL_SECONDS = 300.0  # real seconds without a delivery: the run is stuck
COLUMNS = (
    "guild_id",
    "channel_id",
    "requester_id",
    "request_message_id",
    "input_json",
    "seed",
    "status",
    "created_at",
    "updated_at",
)


def guild_ids(count: int) -> list[int]:
    """`count` server ids whose shards ((id >> 22) % shards) spread evenly, as Discord's do."""
    return [(1 + n) << 22 for n in range(count)]


async def fill_backlog(url: str, jobs: int, guilds: int) -> None:
    """Migrate the schema, then write `jobs` queued jobs across `guilds` servers into it."""
    pool = await create_pool(url)
    try:
        await (await PostgresStore.open(pool)).close()
        rng = random.Random(1)
        now = time.time()
        ids = guild_ids(guilds)
        rows = []
        for n in range(jobs):
            request = GenerationRequest.create(
                f"a lighthouse number {n}", seed=rng.randint(1, 2**31 - 1), steps=STEPS
            )
            guild = ids[n % guilds]
            message = 5_000_000 + n
            seed = request.seed
            rows.append(
                (
                    guild,
                    guild + 10,
                    100 + n % 7,
                    message,
                    request.to_json(),
                    seed,
                    "queued",
                    now,
                    now,
                )
            )
        async with pool.acquire() as connection:
            await connection.copy_records_to_table("jobs", records=rows, columns=COLUMNS)
            await connection.execute("ANALYZE jobs")
    finally:
        await pool.close()


async def time_queries(url: str, running: int, processes: int) -> dict[str, float]:
    """Time the shared queue's queries against the full backlog (ms), then undo the claims."""
    pool = await create_pool(url)
    membership = PostgresMembership(url, lease_seconds=30)
    try:
        store = await PostgresStore.open(pool)
        await membership.join()
        leases = PostgresLeases(store, membership, lease_seconds=30)
        limits = ClaimLimits(running, lambda _guild: 1)
        timings: dict[str, list[float]] = {"claim": [], "queued_for": [], "take_over": []}
        for _ in range(5):
            started = time.perf_counter()
            await leases.claim(limits, CLAIM_BATCH)
            timings["claim"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await leases.queued_for(processes, [0])
            timings["queued_for"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await leases.take_over()
            timings["take_over"].append(time.perf_counter() - started)
        async with pool.acquire() as connection:
            await connection.execute("DELETE FROM job_leases; DELETE FROM guild_turns")
    finally:
        await membership.leave()
        await pool.close()
    return {f"{name}_ms": sorted(times)[len(times) // 2] * 1000 for name, times in timings.items()}


def _rss_mb(pid: int) -> float:
    """A live process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start(args: list[str]) -> subprocess.Popen[str]:
    """Start `python -m bench.throughput ARGS` with pipes to stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.throughput", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _line(process: subprocess.Popen[str]) -> str:
    """The next line the process prints."""
    assert process.stdout is not None
    return process.stdout.readline()


def _finish(process: subprocess.Popen[str]) -> str:
    """Close the process's stdin and return the rest of what it prints."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    out = process.stdout.read()
    process.wait(timeout=60)
    return out


async def run_cluster(strategy: str, options: argparse.Namespace) -> dict[str, Any]:
    """Run one strategy on a fresh schema with N workers; return the run's figures."""
    async with fresh_schema() as url:
        await fill_backlog(url, options.jobs, options.guilds)
        queries = await time_queries(url, options.running, options.processes)
        scale = str(options.time_scale)
        fake = _start(["--serve-fake", "--report-requests", "--time-scale", scale])
        try:
            api = (await asyncio.to_thread(_line, fake)).strip()
            run = await _drive(strategy, options, url, api)
        finally:
            report = json.loads((await asyncio.to_thread(_finish, fake)).strip().splitlines()[-1])
    return _figures(strategy, options, run, report, queries)


async def _drive(strategy: str, options: argparse.Namespace, url: str, api: str) -> dict[str, Any]:
    """Start the workers and run them to the end (killing them all if the run fails)."""
    common = ["--worker", strategy, "--api", api, "--shared-url", url, "--store", "postgres"]
    common += ["--time-scale", str(options.time_scale), "--running", str(options.running)]
    common += ["--processes", str(options.processes), "--lease-seconds", str(options.lease_seconds)]
    common += ["--profile", options.profile] if options.profile else []
    workers = [_start([*common, "--process-index", str(i)]) for i in range(options.processes)]
    try:
        return await _watch(options, url, workers)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()  # only after a failure: a finished run waited for each


async def _watch(
    options: argparse.Namespace, url: str, workers: list[subprocess.Popen[str]]
) -> dict[str, Any]:
    """Let the workers go, watch the database, kill one if asked, stop them; gather figures."""
    owners = [json.loads(await asyncio.to_thread(_line, w))["ready"] for w in workers]
    db = await asyncpg.connect(url)
    victim: int | None = None
    held: dict[int, str | None] = {}  # the killed worker's unfinished jobs -> prediction id
    retaken: dict[int, float] = {}  # -> seconds from the kill until a survivor held the lease
    rss: dict[int, float] = {}
    killed_at = end = 0.0
    done_at_end = 0
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    started = last_progress = time.time()
    done = last_done = 0
    try:
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            done = int(await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'"))
            if done != last_done:
                last_done, last_progress = done, now
            if now - last_progress > STALL_SECONDS:
                raise RuntimeError(f"no delivery for {STALL_SECONDS:.0f} s ({done} done)")
            for i, worker in enumerate(workers):
                if i != victim and worker.poll() is not None:
                    raise RuntimeError(f"worker {i} exited with {worker.returncode}")
            if options.kill_after and victim is None and done >= options.kill_after:
                victim = len(workers) - 1
                rss[victim] = _rss_mb(workers[victim].pid)
                os.kill(workers[victim].pid, signal.SIGKILL)
                killed_at = time.time()
                workers[victim].wait()
                rows = await db.fetch(
                    "SELECT j.id, j.prediction_id FROM job_leases l JOIN jobs j ON j.id = l.job_id "
                    "WHERE l.owner = $1 AND j.status NOT IN ('done', 'failed', 'canceled')",
                    owners[victim],
                )
                held = {int(row[0]): row[1] for row in rows}
            if victim is not None and len(retaken) < len(held):
                rows = await db.fetch(
                    "SELECT j.id FROM jobs j LEFT JOIN job_leases l ON l.job_id = j.id "
                    "WHERE j.id = ANY($1::bigint[]) AND ((l.owner IS NOT NULL AND l.owner <> $2) "
                    "OR j.status IN ('done', 'failed', 'canceled'))",
                    [job for job in held if job not in retaken],
                    owners[victim],
                )
                for row in rows:
                    retaken[int(row[0])] = now - killed_at
            if done >= options.deliveries and not end:
                end, done_at_end = now, done
            if end and len(retaken) >= len(held):
                break
        finished = await db.fetch("SELECT id, prediction_id FROM jobs WHERE status = 'done'")
    finally:
        await db.close()
    for i, worker in enumerate(workers):
        if i != victim:
            rss[i] = _rss_mb(worker.pid)
    outputs: dict[int, dict[str, Any]] = {}
    for i, worker in enumerate(workers):
        if i != victim:
            outputs[i] = json.loads((await asyncio.to_thread(_finish, worker)).splitlines()[-1])
    return {
        "wall": end - started,
        "delivered_at_end": done_at_end,
        "finished": {int(row[0]): row[1] for row in finished},
        "outputs": outputs,
        "rss": rss,
        "victim": victim,
        "killed_at": killed_at,
        "held": held,
        "retaken": retaken,
    }


def _figures(
    strategy: str,
    options: argparse.Namespace,
    run: dict[str, Any],
    report: dict[str, Any],
    queries: dict[str, float],
) -> dict[str, Any]:
    """Combine the driver's, the fake's and the workers' counts into the run's figures."""
    finished: dict[int, str] = run["finished"]
    outputs: dict[int, dict[str, Any]] = run["outputs"]
    n = len(finished)
    by_prediction = report["by_prediction"]
    polls = sum(by_prediction.get(p, {}).get("poll", 0) for p in finished.values())
    downloads = sum(by_prediction.get(p, {}).get("download", 0) for p in finished.values())
    edits: Counter[int] = Counter()
    progress = 0
    for output in outputs.values():
        edits.update({int(job): count for job, count in output["status_edits"].items()})
        progress += sum(v.get("poll_progress", 0) for v in output["polls"].values())
    delivered_edits = sum(edits[job] for job in finished)
    order = sorted(run["rss"])
    per_process = {
        "loop_lag_p99_ms": [outputs[i]["loop_lag_p99_ms"] if i in outputs else None for i in order],
        "loop_lag_100ms_p99_ms": [
            outputs[i]["loop_lag_100ms_p99_ms"] if i in outputs else None for i in order
        ],
        "loop_lag_max_ms": [outputs[i]["loop_lag_max_ms"] if i in outputs else None for i in order],
        "peak_rss_mb": [run["rss"][i] for i in order],
        "delivered_per_process": [outputs[i]["delivered"] if i in outputs else None for i in order],
        "cpu_s": [outputs[i]["cpu_s"] if i in outputs else None for i in order],
    }
    figures: dict[str, Any] = {
        "strategy": strategy,
        "processes": options.processes,
        "delivered": n,
        "wall_s": run["wall"],
        "jobs_per_second": run["delivered_at_end"] / run["wall"] * options.time_scale,
        "api_per_job": 1.0 + (polls + downloads) / n,
        "polls_per_job": polls / n,
        "downloads_per_job": downloads / n,
        "creates_all": report["creates"],
        "progress_polls_survivors": progress,
        "discord_per_job": 2.0 + delivered_edits / n,
        "discord_all_per_job": (sum(o["discord_requests"] for o in outputs.values()) + n) / n,
        **per_process,
        **queries,
    }
    if run["victim"] is not None:
        figures.update(_take_over(run))
    return figures


def _take_over(run: dict[str, Any]) -> dict[str, Any]:
    """How long the killed worker's jobs waited for a survivor, from the kill (real seconds)."""
    held: dict[int, str | None] = run["held"]
    killed_at: float = run["killed_at"]
    launched: dict[int, float] = {}
    asked: dict[str, float] = {}
    for output in run["outputs"].values():
        for job, moment in output["launched"].items():
            if moment >= killed_at:
                launched[int(job)] = min(moment, launched.get(int(job), moment))
        for prediction, moment in output["first_asked"].items():
            asked[prediction] = min(moment, asked.get(prediction, moment))
    relaunch = [launched[job] - killed_at for job in held if job in launched]
    polled = [asked[p] - killed_at for p in held.values() if p is not None and p in asked]
    return {
        "held_at_kill": len(held),
        "with_prediction": sum(1 for p in held.values() if p is not None),
        "takeover_lease_s": max(run["retaken"].values(), default=float("nan")),
        "takeover_launch_s": max(relaunch, default=float("nan")),
        "relaunched": len(relaunch),
        "takeover_poll_s": max(polled, default=float("nan")),
        "polled_after": len(polled),
    }
