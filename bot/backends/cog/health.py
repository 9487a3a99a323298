"""Health checks of the pool's servers: which are up, set up and serving this model.

A server that stops answering, or restarts (its `setup.started_at` changes), or sits idle
while it should be running one of ours, has lost those predictions: the monitor says so and
the pool has them run again elsewhere. SETUP_FAILED, DEFUNCT and UNHEALTHY servers are logged
once per change and never sent work; a server whose schema lacks the model's inputs is
refused for good, with one line in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import aiohttp

from bot.backends.cog.servers import (
    BROKEN,
    UNREACHABLE,
    USABLE,
    CogHTTP,
    CogServer,
    missing_inputs,
)

log = logging.getLogger(__name__)

DOWN_AFTER = 2  # checks in a row without an answer before a server is marked down

LoseOn = Callable[[CogServer, str, float | None], None]  # server, reason, lost if placed before


class HealthMonitor:
    """Checks every server at an interval and tells the pool what changed."""

    def __init__(
        self,
        http: CogHTTP,
        servers: Sequence[CogServer],
        *,
        interval: float,
        lose: LoseOn,
        observed: Callable[[CogServer, str], None],
        changed: Callable[[], None],
    ) -> None:
        self._http = http
        self._servers = servers
        self._interval = interval
        self._lose = lose
        self._observed = observed  # the pool compares a status with what it placed there
        self._changed = changed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Check every server at the interval from now on."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="cog-health")

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def check_all(self) -> None:
        """Check every server once, at the same time."""
        await asyncio.gather(*(self.check(server) for server in self._servers))

    async def _loop(self) -> None:
        """Check, wait, check again."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_all()
            except Exception:
                log.exception("checking the Cog servers failed")

    async def check(self, server: CogServer) -> None:
        """Read one server's health and act on what changed."""
        was_free = server.free
        timeout = max(1.0, min(10.0, 2 * self._interval))
        try:
            answer = await self._http.health(server, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._unanswered(server, f"{type(exc).__name__}")
            return
        body = answer.body if isinstance(answer.body, dict) else {}
        status = str(body.get("status") or f"HTTP {answer.status}")
        server.failures = 0
        setup = body.get("setup") if isinstance(body.get("setup"), dict) else {}
        started = setup.get("started_at") if isinstance(setup, dict) else None
        if server.setup_started is not None and started != server.setup_started:
            log.warning("Cog server %s restarted: its predictions are lost", server.describe())
            completed = setup.get("completed_at") if isinstance(setup, dict) else None
            self._lose(server, "the GPU server restarted", _epoch(completed))
        server.setup_started = started if isinstance(started, str) else None
        self._set_health(server, status)
        if status in USABLE and not server.schema_checked:
            await self._check_schema(server)
        server.foreign_busy = status == "BUSY" and not server.running and not server.claimed
        self._observed(server, status)
        if server.free and not was_free:
            self._changed()

    def _unanswered(self, server: CogServer, why: str) -> None:
        """Count a check without an answer; mark the server down after a few."""
        server.failures += 1
        if server.failures < DOWN_AFTER or server.health == UNREACHABLE:
            return
        log.warning("Cog server %s is down (%s)", server.describe(), why)
        server.health = UNREACHABLE
        server.foreign_busy = False
        self._lose(server, "the GPU server stopped answering", None)

    def _set_health(self, server: CogServer, status: str) -> None:
        """Record a status, logging each change once."""
        if status == server.health:
            return
        previous, server.health = server.health, status
        if status in BROKEN:
            log.error("Cog server %s reports %s: it gets no work", server.describe(), status)
        elif status in USABLE and previous not in USABLE:
            log.info("Cog server %s is %s", server.describe(), status)
        elif status not in USABLE:
            log.info("Cog server %s is %s: it gets no work yet", server.describe(), status)

    async def _check_schema(self, server: CogServer) -> None:
        """Refuse a server whose model does not take this model's inputs."""
        try:
            answer = await self._http.openapi(server)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return  # checked again at the next health check
        server.schema_checked = True
        missing = missing_inputs(answer.body)
        if missing is None:
            log.warning(
                "Cog server %s gives no readable input schema; using it as this model",
                server.describe(),
            )
        elif missing:
            server.refused = refusal(missing)
            log.error("Cog server %s is refused: %s", server.describe(), server.refused)


def refusal(missing: Sequence[str]) -> str:
    """Why a server is refused, in a sentence."""
    return (
        f"it does not take this model's inputs (no {', '.join(missing)}); "
        "check that it runs lucataco/animate-diff"
    )


def _epoch(value: object) -> float | None:
    """Read a server's ISO 8601 time (nanoseconds allowed) as seconds since the epoch."""
    if not isinstance(value, str):
        return None
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        value = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
