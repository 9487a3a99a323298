"""The real Cog pool on real Cog servers, wired to the real scheduler as the app wires them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bot.backends.base import Backend
from bot.backends.cog.callbacks import CogCallbacks
from bot.backends.cog.ids import derive_secret
from bot.backends.cog.pool import CogPool
from bot.core.scheduler import Scheduler
from bot.storage.sqlite import SQLiteStore
from tests.cog_servers import CogServerProcess, free_port
from tests.scheduling import RecordingReporter, started_scheduler

MAX_BYTES = 100 * 1024 * 1024


@dataclass
class Pool:
    """A pool, its callback listener (if any), and where its callbacks are received."""

    pool: CogPool
    callbacks: CogCallbacks | None
    callback_url: str | None


def callback_url() -> str:
    """A callback URL on a free port of 127.0.0.1, under a path (as behind a proxy)."""
    return f"http://127.0.0.1:{free_port()}/cog"


@contextlib.asynccontextmanager
async def cog_pool(
    http: aiohttp.ClientSession,
    servers: Sequence[CogServerProcess],
    work: Path,
    *,
    callbacks: str | bool | None = True,
    interval: float = 0.2,
) -> AsyncIterator[Pool]:
    """A started pool on `servers` (named gpu-a, gpu-b, ...); callbacks True: a new URL."""
    url = callback_url() if callbacks is True else (callbacks or None)
    pool = CogPool(
        http,
        [(f"gpu-{chr(ord('a') + index)}", server.url) for index, server in enumerate(servers)],
        secret=derive_secret("test bot token"),
        callback_url=url,
        uploads_dir=work / "cog-uploads",
        health_interval=interval,
        request_timeout=5,
        hold_timeout=60,
    )
    receiver = None
    if url is not None:
        receiver = CogCallbacks(pool, callback_url=url, max_bytes=MAX_BYTES)
        await receiver.start("127.0.0.1", int(url.split(":")[2].split("/")[0]))
    await pool.start()
    try:
        yield Pool(pool, receiver, url)
    finally:
        await pool.stop()
        if receiver is not None:
            await receiver.stop()


@contextlib.asynccontextmanager
async def scheduler_on(
    store: SQLiteStore,
    backend: Backend,
    pool: CogPool,
    reporter: RecordingReporter,
    work: Path,
    **limits: float,
) -> AsyncIterator[Scheduler]:
    """The real scheduler on a backend, told of the pool's pushes and free servers."""
    async with started_scheduler(
        store, backend, reporter, work_root=work / "jobs", **limits
    ) as scheduler:
        pool.on_push = scheduler.push
        pool.on_capacity = scheduler.capacity_changed
        yield scheduler
