"""Dispatching when several processes share one queue in the database (SharedJobs).

The database decides which queued job starts next (its claim holds the limits for every
process together); this process keeps its fair queue only as a mirror of its own servers'
waiting jobs, for their places and estimates. Three loops keep it in step with the others:
claiming when a slot may have freed, renewing its leases (and learning what it missed), and
taking over jobs whose process stopped renewing theirs. Events from the other processes
(LISTEN/NOTIFY) only make each of these happen sooner: none depends on an event arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bot.backends.base import Prediction, PredictionAPIError
from bot.core.budgets import Budgets
from bot.core.jobs import Job
from bot.core.pushes import PushInbox
from bot.storage.base import StorageUnavailable
from bot.storage.leases import ClaimLimits, EventKind, SharedEvent, SharedJobs

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
CLAIM_BATCH = 20  # jobs claimed in one transaction, at most
TAKE_OVER_EVERY = 1.0  # seconds between looks for jobs whose lease expired
RETRY_AFTER = 1.0  # seconds before a loop that met an error runs again
# The newest part of the logs is what progress is read from: a long log is cut from the front
# so that a pushed prediction still fits an announcement.
PUSHED_LOGS_KEPT = 3000


@dataclass(frozen=True, slots=True)
class SharedHooks:
    """What the shared dispatcher calls back on the scheduler."""

    start_claimed: Callable[[Job], None]  # a job this process claimed: run it
    resume: Callable[[Job], None]  # a started job taken over: follow it from its stored state
    lost: Callable[[int], None]  # another process holds this job's lease now: stop here
    running_ids: Callable[[], set[int]]  # the jobs this process runs
    starting: Callable[[], int]  # running jobs with no prediction yet
    holds_queue: Callable[[], bool]  # an API outage holds the queues
    has_capacity: Callable[[int], bool]  # the backend's room, given the jobs starting
    guild_running_limit: Callable[[int], int]
    queued_ids: Callable[[], set[int]]  # the queued jobs this process shows
    # (the ids of its servers' unclaimed queued jobs, those of them it lacks, its ids before)
    mirror: Callable[[list[int], list[Job], set[int]], None]
    claimed_elsewhere: Callable[[int, int], None]  # (job, guild) left its queue
    ended_elsewhere: Callable[[int], None]  # a job another process ran let go of its lease
    elsewhere: Callable[[], set[int]]  # the jobs of its servers other processes run
    still_elsewhere: Callable[[list[Job]], None]  # those of them as the store holds them now
    cancel_wanted: Callable[[int], None]
    settings_changed: Callable[[int | None], Awaitable[None]]  # None: reread every server
    shards: Callable[[], tuple[int, tuple[int, ...]]]  # (count, the ones this process runs)


class SharedDispatcher:
    """Claims, lease renewals, take-overs and events for one process of many."""

    def __init__(
        self,
        shared: SharedJobs,
        hooks: SharedHooks,
        *,
        running_total: int,
        budgets: Budgets,
        pushes: PushInbox,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._hooks = hooks
        self._running_total = running_total
        self._budgets = budgets
        self._pushes = pushes
        self._sleep = sleep
        self._clock = clock
        self._wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._letting_go: set[asyncio.Task[None]] = set()
        self.processes = 1  # live processes, as the last renewal counted them
        # After this process could not reach the database, it takes nothing over for a lease:
        # the others, cut off too, need that long to renew the leases that lapsed meanwhile.
        self._quiet_until = 0.0
        self._renewed_at = clock()
        shared.listen(self._heard)

    @property
    def share(self) -> int:
        """How many jobs this process may run: its share of the total, rounded up."""
        return max(1, math.ceil(self._running_total / max(1, self.processes)))

    async def start(self) -> None:
        """Take over what is orphaned, mirror this process's queues, then start the loops."""
        await self._renew()
        await self._sync()
        await self._take_over()
        self.kick()
        self._tasks = [
            asyncio.create_task(self._forever(self._claiming, "claim jobs"), name="claims"),
            asyncio.create_task(self._forever(self._renewing, "renew leases"), name="leases"),
            asyncio.create_task(self._forever(self._syncing, "mirror the queues"), name="sync"),
            asyncio.create_task(self._forever(self._taking_over, "take over"), name="take-over"),
        ]

    async def pause(self) -> None:
        """Stop claiming, renewing and taking over (the process is stopping)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def stop(self) -> None:
        """End this process's leases, so that the others take its jobs over now."""
        await self.pause()
        await asyncio.gather(*self._letting_go, return_exceptions=True)
        try:
            await self._shared.let_go_all()
        except Exception:  # the bot stops either way
            log.warning("could not end this process's leases; they expire by themselves")

    def kick(self) -> None:
        """A slot or a job may have freed: claim what fits, soon."""
        self._wanted.set()

    def let_go(self, job_id: int) -> None:
        """A job this process ran has ended here: drop its lease (in the background)."""
        self._background(self._let_go(job_id))

    def announce_push(self, prediction: Prediction) -> None:
        """Pass a webhook delivery to whichever process follows the prediction."""
        data = prediction_payload(prediction)
        self._background(self._announce(SharedEvent(EventKind.PUSH, data=data)))

    def announce_settings(self, guild_id: int) -> None:
        """Tell every process that a server's settings changed (they are stored already)."""
        self._background(self._announce(SharedEvent(EventKind.SETTINGS, guild_id=guild_id)))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one quick write in the background; `stop` waits for it."""
        task = asyncio.create_task(work)
        self._letting_go.add(task)
        task.add_done_callback(self._letting_go.discard)

    # The loops ---------------------------------------------------------------------------

    async def _forever(self, loop: Callable[[], Awaitable[None]], what: str) -> None:
        """Run a loop for the process's life: an unforeseen error is logged, never fatal."""
        while True:
            try:
                await loop()
            except StorageUnavailable as exc:
                self._quiet_until = self._clock() + self._shared.lease_seconds
                log.warning("could not %s: %s", what, exc)
            except Exception:
                log.exception("could not %s", what)
            await self._sleep(RETRY_AFTER)

    async def _claiming(self) -> None:
        """Claim jobs whenever a slot may have freed, as many as this process may run."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self._claim()
            except BaseException:
                self.kick()  # tried again after the pause
                raise

    async def _claim(self) -> None:
        """Claim and start jobs until the database, the limits or this process's share say no."""
        limits = ClaimLimits(self._running_total, self._hooks.guild_running_limit)
        while not self._hooks.holds_queue():
            room = min(CLAIM_BATCH, self.share - len(self._hooks.running_ids()))
            # Each one more job must fit the backend too (own GPUs: one per free server).
            starting = self._hooks.starting()
            room = next(
                (i for i in range(room) if not self._hooks.has_capacity(starting + i)), room
            )
            if room <= 0:
                return
            if self._clock() - self._renewed_at > self._shared.lease_seconds / 2:
                # Cut off a while: renew first, or this process's own lapsed leases (its jobs
                # still running here) would look free to its claim.
                await self._renew()
            quiet = self._clock() < self._quiet_until
            claim = await self._shared.claim(limits, room, take_lapsed=not quiet)
            for job in claim.jobs:
                self._hooks.start_claimed(job)
            for job_id in claim.cancel_wanted:
                self._hooks.cancel_wanted(job_id)  # asked of a claimer that died first
            if len(claim.jobs) < room:
                return

    async def _renewing(self) -> None:
        """Renew this process's leases a few times per lease, and nothing else meanwhile."""
        while True:
            await self._renew()
            await self._sleep(self._shared.lease_seconds / 3)

    async def _renew(self) -> None:
        """Renew leases; stop jobs now leased elsewhere; cancel what was asked."""
        # Only jobs running before the renewal was read: one claimed meanwhile is not in it.
        before = self._hooks.running_ids()
        renewal = await self._shared.renew()
        self._renewed_at = self._clock()
        for job_id in (before & self._hooks.running_ids()) - renewal.held:
            log.warning("job %s is leased by another process now; stopping here", job_id)
            self._hooks.lost(job_id)
        for job_id in renewal.cancel_wanted:
            self._hooks.cancel_wanted(job_id)
        self.processes = await self._shared.live_processes()
        self._budgets.share_among(self.processes)

    async def _syncing(self) -> None:
        """Catch up with what announcements may have missed, as often as leases renew."""
        while True:
            await self._sleep(self._shared.lease_seconds / 3)
            await self._sync()
            await self._hooks.settings_changed(None)
            self.kick()  # a claim that found the database away is tried again here too

    async def _sync(self) -> None:
        """Mirror this process's servers' queues as the store holds them."""
        count, shards = self._hooks.shards()
        known = self._hooks.queued_ids()
        queued = await self._shared.queued_for(count, shards)
        # Only the jobs the mirror lacks are read whole: 10,000 queued rows are not.
        running = self._hooks.running_ids()
        lacking = [job_id for job_id in queued if job_id not in known and job_id not in running]
        self._hooks.mirror(queued, await self._shared.jobs(lacking) if lacking else [], known)
        if elsewhere := self._hooks.elsewhere():
            self._hooks.still_elsewhere(await self._shared.jobs(sorted(elsewhere)))

    async def _taking_over(self) -> None:
        """Look for jobs whose lease expired, about once a second."""
        while True:
            await self._sleep(TAKE_OVER_EVERY)
            if self._clock() >= self._quiet_until:
                await self._take_over()

    async def _take_over(self) -> None:
        """Resume every started job whose process stopped renewing its lease; claim its rest."""
        taken = await self._shared.take_over()
        for job in taken.jobs:
            self._hooks.resume(job)
        for job_id in taken.cancel_wanted:
            self._hooks.cancel_wanted(job_id)  # asked of the process that died
        if taken.jobs or await self._shared.requeue_lapsed():
            # A process died: this one's share of the running total grows now, not at the
            # next renewal, and the jobs it had claimed but not started are claimed again.
            self.processes = await self._shared.live_processes()
            self._budgets.share_among(self.processes)
            self.kick()

    # Events ------------------------------------------------------------------------------

    async def _heard(self, event: SharedEvent) -> None:
        """Act on another process's announcement."""
        if event.kind is EventKind.FREED:
            if event.job_id is not None:
                self._hooks.ended_elsewhere(event.job_id)
            self.kick()
        elif event.kind is EventKind.CLAIMED and event.job_id and event.guild_id:
            if event.job_id not in self._hooks.running_ids():
                self._hooks.claimed_elsewhere(event.job_id, event.guild_id)
        elif event.kind is EventKind.CANCEL and event.job_id:
            if event.job_id in self._hooks.running_ids():
                self._hooks.cancel_wanted(event.job_id)
        elif event.kind is EventKind.PUSH and event.data is not None:
            with contextlib.suppress(PredictionAPIError):
                self._pushes.push(Prediction.from_json(event.data))
        elif event.kind is EventKind.SETTINGS:
            await self._hooks.settings_changed(event.guild_id)

    async def _let_go(self, job_id: int) -> None:
        """Drop one lease; if the database is away, the lease expires by itself."""
        try:
            await self._shared.let_go(job_id)
        except StorageUnavailable:
            log.info("could not drop the lease of job %s; it expires by itself", job_id)

    async def _announce(self, event: SharedEvent) -> None:
        """Announce an event; a lost one is caught up by polling."""
        try:
            await self._shared.announce(event)
        except StorageUnavailable:
            log.info("could not announce %s to the other processes", event.kind.value)


def prediction_payload(prediction: Prediction) -> dict[str, object]:
    """A pushed prediction as the API's JSON, its logs cut to the newest part."""
    return {
        "id": prediction.id,
        "status": prediction.status,
        "input": dict(prediction.input),
        "output": prediction.output,
        "error": prediction.error,
        "logs": prediction.logs[-PUSHED_LOGS_KEPT:],
        "metrics": dict(prediction.metrics),
        "version": prediction.version,
        "created_at": prediction.created_at,
        "started_at": prediction.started_at,
        "completed_at": prediction.completed_at,
        "data_removed": prediction.data_removed,
    }
