"""How the core's parts are built and connected, once, for the scheduler that owns them.

The scheduler keeps the tasks, the requests and dispatching; everything the parts need to
call back on it comes in as `SchedulerHooks`, so no part holds the scheduler itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bot.backends.base import Backend
from bot.core.announcing import WaitingAnnouncer
from bot.core.budgets import Budgets, DeferralCountingBudget
from bot.core.context import JobContext
from bot.core.delivery import ResultDelivery
from bot.core.eta import TimingHistory
from bot.core.fair_queue import FairQueue
from bot.core.following import PredictionFollower
from bot.core.jobs import Job
from bot.core.limits import GuildLimits, SchedulerLimits
from bot.core.metering import BudgetedBackend
from bot.core.outage import OutageTracker
from bot.core.outcomes import JobOutcomes
from bot.core.polling import PollPlanner
from bot.core.pushes import PushInbox
from bot.core.reporter import JobReporter, JobStatusUpdate
from bot.core.runner import JobRunner
from bot.core.signals import JobSignals
from bot.core.status import StatusPublisher
from bot.core.store_outage import PatientStore
from bot.observability.metrics import BotMetrics
from bot.storage.base import Store

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SchedulerHooks:
    """What the parts call back on the scheduler."""

    guild_limits: Callable[[int], GuildLimits]
    outage_changed: Callable[[bool], None]
    send_status: Callable[[int, JobStatusUpdate], Awaitable[None]]
    reporter: Callable[[], JobReporter]
    dispatch: Callable[[], None]
    stopping: Callable[[], bool]
    released: Callable[[int], Awaitable[None]]  # a held job's message exists: it may start


@dataclass(frozen=True, slots=True)
class CoreParts:
    """The scheduler's collaborators, connected."""

    queue: FairQueue
    outage: OutageTracker
    status: StatusPublisher
    signals: JobSignals
    pushes: PushInbox
    planner: PollPlanner
    patient: PatientStore
    outcomes: JobOutcomes
    delivery: ResultDelivery
    runner: JobRunner
    announcer: WaitingAnnouncer


def build_parts(
    store: Store,
    backend: Backend,
    hooks: SchedulerHooks,
    *,
    limits: SchedulerLimits,
    budgets: Budgets,
    metrics: BotMetrics,
    history: TimingHistory,
    planner: PollPlanner | None,
    clock: Clock,
    wall_clock: Clock,
    sleep: Sleep,
    work_root: Path | None,
) -> CoreParts:
    """Build the fair queue, the status publisher, the runner and what they share."""
    queue = FairQueue(running_total=limits.running_total, limits=hooks.guild_limits)
    outage = OutageTracker(clock, hooks.outage_changed)
    metrics.watch(queue, outage)
    # Measured runs (`history`): loaded from the store at start, fed by each success; the
    # status publisher reads them for estimates, the poll planner to aim polls.
    status = StatusPublisher(
        hooks.send_status,
        queue=queue,
        outage=outage,
        history=history,
        running_limit=lambda guild_id: hooks.guild_limits(guild_id).running,
        interval=limits.status_interval,
        clock=clock,
        wall_clock=wall_clock,
        sleep=sleep,
        budget=DeferralCountingBudget(budgets.discord, metrics.status_edit_deferred),
        has_capacity=backend.has_capacity,
    )
    status.relay.on_shed = metrics.status_edit
    signals = JobSignals(sleep)
    pushes = PushInbox(signals.wake)
    planner = planner or PollPlanner(
        history, wall_clock=wall_clock, pushes=lambda: backend.features.pushes
    )
    patient = PatientStore(store, status, clock=clock, sleep=sleep)
    outcomes = JobOutcomes(patient, status, hooks.reporter, metrics)
    ctx = JobContext(
        backend=BudgetedBackend(backend, budgets.api),
        store=patient,
        status=status,
        outcomes=outcomes,
        signals=signals,
        pushes=pushes,
        outage=outage,
        planner=planner,
        limits=limits,
        reporter=hooks.reporter,
        clock=clock,
        wall_clock=wall_clock,
        metrics=metrics,
    )
    follower = PredictionFollower(ctx)
    delivery = ResultDelivery(ctx, follower=follower, stopping=hooks.stopping, work_root=work_root)

    def placed(job: Job) -> None:
        """A job just placed upstream was counted as on its way there: room may have freed."""
        if queue.update(job):
            hooks.dispatch()

    runner = JobRunner(ctx, follower=follower, delivery=delivery, track=placed)
    announcer = WaitingAnnouncer(
        queue=queue,
        status=status,
        runner=runner,
        outcomes=outcomes,
        dispatch=hooks.dispatch,
        released=hooks.released,
    )
    return CoreParts(
        queue=queue,
        outage=outage,
        status=status,
        signals=signals,
        pushes=pushes,
        planner=planner,
        patient=patient,
        outcomes=outcomes,
        delivery=delivery,
        runner=runner,
        announcer=announcer,
    )
