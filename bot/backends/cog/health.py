"""Health checks of the pool's servers: which are up, set up and serving this model.

A server that stops answering, or restarts (its `setup.started_at` changes), or sits idle
while it should be running one of ours, has lost those predictions: the monitor says so (to
losses.py) and the pool has them run again elsewhere. A server refusing connections is down
after two checks; one that accepts them but does not answer (stalled, or a slow network) only
after DOWN_AFTER_SECONDS. SETUP_FAILED, DEFUNCT and UNHEALTHY servers are logged once per
change and never sent work; a server whose schema lacks the model's inputs is refused for
good, with one line in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp

from bot.backends.cog.losses import LossWatch
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
DOWN_AFTER_SECONDS = 10.0  # and, unless it refuses connections, this long without an answer


class HealthMonitor:
    """Checks every server at an interval and tells the pool what changed."""

    def __init__(
        self,
        http: CogHTTP,
        servers: Sequence[CogServer],
        *,
        interval: float,
        losses: LossWatch,
        changed: Callable[[], None],
        down_after: float = DOWN_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._servers = servers
        self._interval = interval
        self._losses = losses  # compares what a server says with what the pool placed there
        self._changed = changed
        self._down_after = down_after
        self._clock = clock
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
        asked = self._clock()
        try:
            answer = await self._http.health(server, timeout=timeout)
        except aiohttp.ClientConnectorError as exc:
            self._unanswered(server, f"{type(exc).__name__}", asked, refused=True)
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._unanswered(server, f"{type(exc).__name__}", asked, refused=False)
            return
        body = answer.body if isinstance(answer.body, dict) else {}
        status = str(body.get("status") or f"HTTP {answer.status}")
        server.failures, server.unanswered_since = 0, None
        setup = body.get("setup")
        started = setup.get("started_at") if isinstance(setup, dict) else None
        # Only a Cog answer says which instance it is (a proxy's 502 or garbage does not).
        if isinstance(started, str):
            if server.setup_started is not None and started != server.setup_started:
                log.warning("Cog server %s restarted: its predictions are lost", server.describe())
                # Placed before its old instance last answered: the new one never had them.
                self._losses.lose_on(server, "the GPU server restarted", server.answered_at)
            self._losses.answered(server, started)
            server.setup_started = started
            server.answered_at = self._clock()
        self._set_health(server, status)
        if status in USABLE and not server.schema_checked:
            await self._check_schema(server)
        server.foreign_busy = status == "BUSY" and not server.running and not server.claimed
        self._losses.observed(server, status)
        if server.free and not was_free:
            self._changed()

    def _unanswered(self, server: CogServer, why: str, asked: float, *, refused: bool) -> None:
        """Count a check without an answer; mark the server down after a few (or a while)."""
        server.failures += 1
        if server.unanswered_since is None:
            server.unanswered_since = asked
        silent = self._clock() - server.unanswered_since
        if server.failures < DOWN_AFTER or server.health == UNREACHABLE:
            return
        if not refused and silent < self._down_after:
            return  # it takes connections: maybe only stalled, and still running ours
        log.warning("Cog server %s is down (%s)", server.describe(), why)
        server.health = UNREACHABLE
        server.foreign_busy = False
        self._losses.lose_on(server, "the GPU server stopped answering", None)

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
