"""A pool of self-hosted Cog servers behind the Backend seam.

Each server runs one prediction at a time. A create goes to a server that is READY and runs
nothing of ours (health checks plus the pool's bookkeeping); a 409 means busy, so the next
server is tried. The end of a prediction is learned from its `completed` webhook (with a
callback URL), or else from a `POST /predictions` held open until the answer: a Cog server
has no GET of a prediction, and re-sending a PUT once it ended would start it again. What
`get` reads is the pool's own record (tracking.py). A server that goes down or forgets a
prediction makes it `lost`, and the core runs the same input and seed again elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bot.backends.base import (
    AtCapacity,
    Attempt,
    BackendFeatures,
    DownloadError,
    Prediction,
    PredictionAPIError,
    PredictionNotFound,
    current_attempt,
)
from bot.backends.cog.health import DOWN_AFTER_SECONDS, HealthMonitor
from bot.backends.cog.holding import HeldRequests
from bot.backends.cog.ids import CogPredictionId, Naming, clean_key, parse
from bot.backends.cog.losses import FORGOTTEN_AFTER_SECONDS, LossWatch
from bot.backends.cog.outputs import copy_upload, write_data_uri
from bot.backends.cog.placing import put_with_webhook
from bot.backends.cog.recovery import find_again, recover
from bot.backends.cog.servers import CogHTTP, CogServer, error_detail
from bot.backends.cog.spilling import Spiller
from bot.backends.cog.tracking import EndedPredictions, Tracked
from bot.observability.metrics import BotMetrics

log = logging.getLogger(__name__)

TYPICAL_RUN_SECONDS = 60.0  # a guess at one prediction's length before any has been measured
RUNS_KEPT = 20


class CogPool:
    """Creates, follows and cancels predictions on a pool of Cog servers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        servers: Sequence[tuple[str, str]],
        *,
        secret: bytes,
        callback_url: str | None,
        uploads_dir: Path,
        health_interval: float = 2.0,
        request_timeout: float = 10.0,
        hold_timeout: float = 1860.0,
        max_bytes: int = 100 * 1024 * 1024,
        down_after: float = DOWN_AFTER_SECONDS,
        forgotten_after: float = FORGOTTEN_AFTER_SECONDS,
        metrics: BotMetrics | None = None,
    ) -> None:
        self.servers = [CogServer(name, url.rstrip("/")) for name, url in servers]
        self._by_name = {server.name: server for server in self.servers}
        self._naming = Naming(secret)
        self.callback_url = callback_url.rstrip("/") if callback_url else None
        self.uploads_dir = uploads_dir
        self._http = CogHTTP(session, timeout=request_timeout, max_bytes=max_bytes, metrics=metrics)
        self._running: dict[str, Tracked] = {}  # our id -> a prediction that has not ended
        self._by_token: dict[str, Tracked] = {}
        self._by_server_id: dict[str, Tracked] = {}
        self._ended = EndedPredictions()
        self._spiller = Spiller(uploads_dir, max_bytes=max_bytes)
        self._runs: deque[float] = deque(maxlen=RUNS_KEPT)  # GPU seconds of recent successes
        self._held = HeldRequests(self._http, timeout=hold_timeout, end=self._end)
        self.losses = LossWatch(
            self._http,
            self._held,
            running=self._running.values,
            end=self._end,
            callback_url=self.callback_url,
            forgotten_after=forgotten_after,
        )
        self.health = HealthMonitor(
            self._http,
            self.servers,
            interval=health_interval,
            losses=self.losses,
            changed=self._capacity_changed,
            down_after=down_after,
        )
        self.on_push: Callable[[Prediction], None] | None = None  # the scheduler's inbox
        self.on_capacity: Callable[[], None] | None = None  # a server freed: start a job

    # Life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every server once (so the first jobs have somewhere to go), then keep at it."""
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.uploads_dir.glob("*/*"):
            leftover.unlink(missing_ok=True)  # uploads of predictions from before a restart
        await self.health.check_all()
        self.health.start()

    async def stop(self) -> None:
        """Stop the health checks and drop the requests held open (their servers cancel them)."""
        await self.health.stop()
        await self._held.stop()
        await self.losses.stop()
        await self._spiller.stop()

    # The Backend seam ------------------------------------------------------------------

    @property
    def features(self) -> BackendFeatures:
        """Read from the pool's own records (no request), each change pushed, found by id."""
        return BackendFeatures(polling=True, pushes=True, search=True)

    def unmetered(self, reference: str | None) -> bool:
        """Every request goes to the bot's own GPUs: none counts against the API budget."""
        return True

    def has_capacity(self, starting: int) -> bool:
        """True if more servers are free than jobs are on their way to one.

        A job whose create is being sent has its server already (it is one of `starting`,
        and its server is no longer free): it is counted once.
        """
        sending = sum(server.claimed for server in self.servers)
        return sum(server.free for server in self.servers) > starting - sending

    def has_free_server(self) -> bool:
        """True if a create sent now would find a server to take it."""
        return any(server.free for server in self.servers)

    def expected_wait(self, starting: int) -> float:
        """Seconds until a server should be free for the job after `starting` others."""
        usable = [server for server in self.servers if server.usable]
        if not usable:
            return float("inf")
        typical = statistics.median(self._runs) if self._runs else TYPICAL_RUN_SECONDS
        waits = sorted(self._time_left(server, typical) for server in usable)
        rounds, index = divmod(starting, len(waits))
        return waits[index] + rounds * typical

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
        """Place a prediction on a free server (409: try the next); AtCapacity if none is."""
        attempt = current_attempt.get() or Attempt(f"run-{uuid.uuid4().hex[:12]}", api_input)
        tried: set[str] = set()
        while True:
            server = next((s for s in self.servers if s.free and s.name not in tried), None)
            if server is None:
                raise AtCapacity("Every GPU server is busy.")
            tried.add(server.name)
            server.claimed += 1
            try:
                placed = await self._place(server, clean_key(attempt.key), api_input)
            finally:
                server.claimed -= 1
            if placed is not None:
                return placed

    async def get(self, prediction_id: str) -> Prediction:
        """The prediction as last reported; after a restart, ask its server for it again."""
        tracked = self._running.get(prediction_id) or self._ended.get(prediction_id)
        if tracked is not None:
            return tracked.state
        parsed = parse(prediction_id)
        if parsed is None:
            raise PredictionNotFound("This is not a prediction of the GPU servers.", status=404)
        return await recover(self, parsed)

    async def get_once(self, prediction_id: str, *, timeout: float) -> Prediction:
        """The prediction as last reported: its own records, so one read is the whole of it."""
        return await self.get(prediction_id)

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
    ) -> Prediction | None:
        """Find this run's prediction on a busy server by its id (its create's answer was lost)."""
        return await find_again(self, api_input, accept=accept)

    async def cancel(self, prediction_id: str) -> Prediction:
        """Ask the prediction's server to stop it; its end comes as usual."""
        tracked = self._running.get(prediction_id)
        if tracked is None:
            ended = self._ended.get(prediction_id)
            if ended is not None:
                return ended.state
            raise PredictionNotFound("The GPU servers have no such prediction running.", status=404)
        server = self._by_name[tracked.id.server]
        try:
            answer = await self._http.cancel(server, tracked.server_id)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PredictionAPIError(f"The GPU server did not take the cancel ({exc}).") from None
        if answer.status >= 400 and answer.status != 404:
            raise PredictionAPIError(error_detail(answer), status=answer.status)
        return tracked.state

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        """Decode a `data:` output, or copy a file a server uploaded to us; nothing else."""
        if url.startswith("data:"):
            return await asyncio.to_thread(write_data_uri, url, dest, max_bytes)
        path = self._upload_of(url)
        if path is None:
            raise DownloadError("The GPU server named an output the bot did not receive from it.")
        return await asyncio.to_thread(copy_upload, path, dest, max_bytes)

    def received(self, url: str) -> bool:
        """True if a server uploaded this output to us."""
        return self._upload_of(url) is not None

    def _upload_of(self, url: str) -> Path | None:
        """The file a server uploaded as this output, if any."""
        for tracked in (*self._running.values(), *self._ended.values()):
            path = tracked.files.get(url)
            if path is not None:
                return path
        return None

    # Callbacks (webhooks and uploads, see callbacks.py) --------------------------------

    def take_webhook(self, token: str, body: object) -> bool:
        """Take one server's account of a running prediction; False if it is not ours."""
        tracked = self._by_token.get(token)
        if tracked is None or tracked.held:
            return False
        if not isinstance(body, dict) or body.get("id") != tracked.server_id:
            return False
        tracked.heard = True
        self.losses.heard_from(self._by_name[tracked.id.server])
        state = tracked.update(body)
        if state is None:
            return True
        if state.is_terminal:
            self._end(tracked)
        else:
            self._push(state)
        return True

    def expects_webhook(self, token: str) -> bool:
        """True if the token is a running prediction's that reports by webhook."""
        tracked = self._by_token.get(token)
        return tracked is not None and not tracked.held

    def upload_target(self, server_id: str) -> Tracked | None:
        """The running prediction an upload is for, if it is ours."""
        tracked = self._by_server_id.get(server_id)
        return tracked if tracked is not None and not tracked.held else None

    # Placing and ending ------------------------------------------------------------------

    async def _place(
        self, server: CogServer, key: str, api_input: Mapping[str, Any]
    ) -> Prediction | None:
        """Send one create; None when this server cannot take it now (try another)."""
        prediction_id = CogPredictionId(server.name, key)
        tracked = self._track(prediction_id, api_input, server, held=self.callback_url is None)
        return await self._send(server, tracked, "placed on")

    def running(self, prediction_id: str) -> Tracked | None:
        """Our prediction of this id, if it runs."""
        return self._running.get(prediction_id)

    async def reattach(
        self, server: CogServer, prediction_id: CogPredictionId, api_input: Mapping[str, Any]
    ) -> Prediction | None:
        """The same PUT again: it answers a running prediction's state (or starts it anew)."""
        known = self._running.get(str(prediction_id))
        if known is not None:
            return known.state  # already found (by another look-up while this one waited)
        tracked = self._track(prediction_id, api_input, server, held=False)
        # Its webhooks may all have gone while the bot was away: a loss, not a bad callback URL.
        tracked.heard = True
        return await self._send(server, tracked, "found again on")

    async def _send(self, server: CogServer, tracked: Tracked, done: str) -> Prediction | None:
        """Send a tracked prediction's create; forget it unless the server took it."""
        try:
            if tracked.held:
                placed = await self._held.place(server, tracked)
            else:
                webhook = f"{self.callback_url}/webhook/{tracked.token}"
                placed = await put_with_webhook(
                    self._http, server, tracked, webhook, abandon=self.losses.abandon
                )
        except BaseException:
            self._untrack(tracked)  # refused (bad input) or cancelled: the server stays free
            raise
        if placed is None:
            self._untrack(tracked)
        else:
            log.info("prediction %s %s %s", tracked.state.id, done, server.describe())
        return placed

    def _track(
        self,
        prediction_id: CogPredictionId,
        api_input: Mapping[str, Any],
        server: CogServer,
        *,
        held: bool,
    ) -> Tracked:
        """Record a prediction about to be sent, so its first callbacks find it."""
        server_id = self._naming.server_id(prediction_id)
        tracked = Tracked.placed(
            prediction_id,
            server_id=server_id,
            token=self._naming.token(server_id),
            api_input=api_input,
            held=held,
        )
        self._running[tracked.state.id] = tracked
        self._by_token[tracked.token] = tracked
        self._by_server_id[server_id] = tracked
        server.running.add(tracked.state.id)
        return tracked

    def _untrack(self, tracked: Tracked) -> None:
        """Forget a running prediction (it ended, was lost, or was never placed)."""
        state_id = tracked.state.id
        # Only its own entries: a later run of the same id may have taken the same names.
        if self._running.get(state_id) is tracked:
            del self._running[state_id]
        if self._by_token.get(tracked.token) is tracked:
            del self._by_token[tracked.token]
        if self._by_server_id.get(tracked.server_id) is tracked:
            del self._by_server_id[tracked.server_id]
        server = self._by_name.get(tracked.id.server)
        if server is not None and state_id not in self._running:
            server.running.discard(state_id)

    def _end(self, tracked: Tracked) -> None:
        """A prediction ended (or was lost): free its server, keep its state, tell its job."""
        if tracked.ended:
            return  # a held request's answer and a loss can both end it
        tracked.ended = True
        self._untrack(tracked)
        self._ended.add(tracked)
        self._spiller.spill(tracked)
        log.info("prediction %s ended: %s", tracked.state.id, tracked.state.status)
        if tracked.state.status == "succeeded" and tracked.state.predict_time is not None:
            self._runs.append(tracked.state.predict_time)
        if tracked.accepted:
            self._push(tracked.state)
        self._capacity_changed()

    def _time_left(self, server: CogServer, typical: float) -> float:
        """Seconds until a usable server should be free, from when its prediction was sent."""
        if server.idle:
            return 0.0
        placed = [self._running[i].placed_wall for i in server.running if i in self._running]
        if not placed:
            return typical  # busy with someone else's: assume it just began
        return max(0.0, typical - (time.time() - min(placed)))

    def _push(self, state: Prediction) -> None:
        """Hand a new state to the core."""
        if self.on_push is not None:
            self.on_push(state)

    def _capacity_changed(self) -> None:
        """Tell the core a server may be free."""
        if self.on_capacity is not None:
            self.on_capacity()
