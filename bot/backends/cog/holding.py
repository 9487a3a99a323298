"""Following predictions without a callback URL: a `POST /predictions` held open to the end.

With no way for a server to reach the bot, the answer of a request held open is the only
way to learn how a prediction ended (no GET exists, and a PUT re-sent after the end would
start it again). A refusal (409 busy, 503 not set up, 422 bad input) is answered at once, so
a request still open after a moment was taken; the answer, whenever it comes, is the end.
If the bot goes away the server cancels the prediction: a restart runs it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from enum import Enum

import aiohttp

from bot.backends.base import Prediction, PredictionAPIError
from bot.backends.cog.servers import Answer, CogHTTP, CogServer, error_detail
from bot.backends.cog.tracking import Tracked, timestamp

log = logging.getLogger(__name__)

ACCEPT_WINDOW = 0.5  # seconds within which a server answers a create it refuses


class Held(Enum):
    """How a held request ended."""

    ENDED = "ended"  # the server answered the end
    BUSY = "busy"  # 409: every slot busy
    UNREADY = "unready"  # 503 or another server error
    UNREACHED = "unreached"  # nothing was sent
    CUT_OFF = "cut off"  # the connection broke while it ran
    REFUSED = "refused"  # the input was refused


class HeldRequests:
    """The requests held open to the servers, one per running prediction."""

    def __init__(self, http: CogHTTP, *, timeout: float, end: Callable[[Tracked], None]) -> None:
        self._http = http
        self._timeout = timeout
        self._end = end  # records an accepted prediction's end in the pool
        self._tasks: set[asyncio.Task[tuple[Held, Answer | None]]] = set()

    async def place(self, server: CogServer, tracked: Tracked) -> Prediction | None:
        """Send the held request; return once it is taken (or ended); None to try elsewhere."""
        task = asyncio.create_task(self._send(server, tracked), name=f"cog-{tracked.server_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: self._settle(tracked, done))
        await asyncio.wait({task}, timeout=ACCEPT_WINDOW)
        if not task.done():
            tracked.accepted = True
            tracked.update({"id": tracked.server_id, "status": "processing"})
            return tracked.state
        outcome, answer = task.result()
        if outcome is Held.ENDED:
            tracked.accepted = True
            self._end(tracked)
            return tracked.state
        if outcome is Held.REFUSED and answer is not None:
            raise PredictionAPIError(error_detail(answer), status=answer.status)
        if outcome is Held.BUSY:
            server.foreign_busy = True
        elif outcome in (Held.UNREACHED, Held.CUT_OFF):
            server.failures += 1
        return None

    def drop(self, tracked: Tracked) -> None:
        """Stop holding a prediction that was lost anyway."""
        if tracked.hold is not None:
            tracked.hold.cancel()

    async def stop(self) -> None:
        """Drop every held request."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _send(self, server: CogServer, tracked: Tracked) -> tuple[Held, Answer | None]:
        """Hold the request open until its answer, and say how it went."""
        tracked.hold = asyncio.current_task()
        try:
            answer = await self._http.post_held(
                server, tracked.server_id, tracked.api_input, timeout=self._timeout
            )
        except aiohttp.ClientConnectorError:
            return Held.UNREACHED, None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("Cog server %s: held request cut off (%s)", server.name, exc)
            return Held.CUT_OFF, None
        if answer.status == 200 and tracked.update(answer.body) is not None:
            return Held.ENDED, answer
        if answer.status == 409:
            return Held.BUSY, answer
        if answer.status >= 500 or answer.status == 200:
            return Held.UNREADY, answer
        return Held.REFUSED, answer

    def _settle(self, tracked: Tracked, task: asyncio.Task[tuple[Held, Answer | None]]) -> None:
        """Record the end of a prediction whose create has already returned."""
        if not tracked.accepted or task.cancelled():
            return  # the create reads the answer itself, or the pool already lost it
        outcome, answer = task.result()
        if outcome is Held.REFUSED and answer is not None:
            # A refusal of the input, only slower than the accept window: running it again
            # elsewhere would be refused the same way.
            tracked.state = replace(
                tracked.state, status="failed", error=error_detail(answer), completed_at=timestamp()
            )
        elif outcome is not Held.ENDED:
            tracked.lose(
                "the GPU server stopped answering"
                if outcome in (Held.CUT_OFF, Held.UNREACHED)
                else "the GPU server refused it"
            )
        self._end(tracked)
