"""When a server has lost predictions of ours, and cancelling what the pool gave up on.

A server that went down or restarted has lost what ran there. One that reports READY while
one of ours (followed by webhooks) should run there has forgotten it, but only after a grace
measured in time: coglet reports READY before its `completed` webhook arrives, and retries a
failed one for several seconds. A prediction with no webhook at all by then tells that
COG_CALLBACK_URL does not reach the bot: running it again would not help.

A server marked down may only have stalled, and a PUT left unanswered may have started: the
pool runs the job elsewhere, so when the same server (same `setup.started_at`) answers again,
each prediction it gave up there is cancelled, lest the job run on two GPUs at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import aiohttp

from bot.backends.cog.holding import HeldRequests
from bot.backends.cog.servers import CogHTTP, CogServer
from bot.backends.cog.tracking import Tracked, timestamp

log = logging.getLogger(__name__)

# Seconds a server must report READY (at two checks at least) while one of ours should run
# there before it counts as forgotten: coglet retries a failed webhook for 6.2 s in all.
FORGOTTEN_AFTER_SECONDS = 10.0
UNREACHED = (
    "The GPU server's messages never reached the bot (check COG_CALLBACK_URL), so the bot "
    "cannot tell how the animation went."
)

Clock = Callable[[], float]


class LossWatch:
    """Marks the predictions a server lost, and cancels those the pool gave up on."""

    def __init__(
        self,
        http: CogHTTP,
        held: HeldRequests,
        *,
        running: Callable[[], Iterable[Tracked]],
        end: Callable[[Tracked], None],
        callback_url: str | None,
        forgotten_after: float = FORGOTTEN_AFTER_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._http = http
        self._held = held
        self._running = running
        self._end = end
        self._callback_url = callback_url
        self._forgotten_after = forgotten_after
        self._clock = clock
        # server name -> (its setup.started_at then, server ids given up there)
        self._abandoned: dict[str, tuple[str | None, set[str]]] = {}
        self._unreached_logged: set[str] = set()
        self._cancels: set[asyncio.Task[None]] = set()

    def lose_on(self, server: CogServer, reason: str, placed_before: float | None) -> None:
        """Every prediction of ours on a server that went down or restarted is lost.

        `placed_before` (the bot's monotonic clock): only those placed before it.
        """
        for tracked in self._on(server):
            if placed_before is None or tracked.placed_at < placed_before:
                if placed_before is None:  # down, maybe only stalled: it may still run it
                    self.abandon(server, tracked.server_id)
                log.warning("prediction %s lost: %s", tracked.state.id, reason)
                tracked.lose(reason)
                self._held.drop(tracked)
                self._end(tracked)

    def abandon(self, server: CogServer, server_id: str) -> None:
        """Remember a prediction the pool leaves on a server, to cancel when it answers."""
        started, ids = self._abandoned.get(server.name, (server.setup_started, set()))
        ids.add(server_id)
        self._abandoned[server.name] = (started, ids)

    def answered(self, server: CogServer, started: str) -> None:
        """A server answered: cancel what was given up there, if it is the same instance."""
        given_up = self._abandoned.pop(server.name, None)
        if given_up is None or given_up[0] != started:
            return  # nothing left there, or it restarted (and forgot it all)
        ours = {tracked.server_id for tracked in self._on(server)}
        for server_id in given_up[1] - ours:
            task = asyncio.create_task(self._cancel(server, server_id), name="cog-cancel")
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

    def observed(self, server: CogServer, status: str) -> None:
        """Count a READY server's checks against what should run there; lose it past grace."""
        now = self._clock()
        for tracked in self._on(server):
            if tracked.held or not tracked.accepted:
                continue
            if status != "READY":
                tracked.ready_since, tracked.ready_checks = None, 0
                continue
            if tracked.ready_since is None:
                tracked.ready_since = now
            tracked.ready_checks += 1
            if tracked.ready_checks < 2 or now - tracked.ready_since < self._forgotten_after:
                continue
            if tracked.heard:
                log.warning("prediction %s lost: its server forgot it", tracked.state.id)
                tracked.lose("the GPU server forgot it")
            else:
                self._unreached(server)
                tracked.state = replace(
                    tracked.state, status="failed", error=UNREACHED, completed_at=timestamp()
                )
            self._end(tracked)

    def heard_from(self, server: CogServer) -> None:
        """A server's webhook arrived: log it anew if its webhooks stop reaching the bot."""
        self._unreached_logged.discard(server.name)

    async def stop(self) -> None:
        """Drop the cancels still being sent."""
        for task in list(self._cancels):
            task.cancel()
        await asyncio.gather(*self._cancels, return_exceptions=True)

    def _on(self, server: CogServer) -> list[Tracked]:
        """Our running predictions on a server."""
        return [tracked for tracked in self._running() if tracked.id.server == server.name]

    def _unreached(self, server: CogServer) -> None:
        """Say once, in one line, that a server's webhooks do not reach the bot."""
        if server.name in self._unreached_logged:
            return
        self._unreached_logged.add(server.name)
        log.error(
            "Cog server %s ran a prediction but none of its webhooks reached the bot at "
            "COG_CALLBACK_URL (%s): set COG_CALLBACK_URL to an address that server can reach",
            server.describe(),
            self._callback_url,
        )

    async def _cancel(self, server: CogServer, server_id: str) -> None:
        """Ask a server to stop a prediction the pool gave up there (best effort)."""
        try:
            answer = await self._http.cancel(server, server_id)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("Cog server %s: cancel of %s not sent (%s)", server.name, server_id, exc)
            return
        if answer.status < 400:
            log.info("Cog server %s: cancelled %s, run elsewhere", server.name, server_id)
