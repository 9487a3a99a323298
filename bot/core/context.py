"""What every step of a job's life shares: the seams, where to report, what to watch, clocks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.core.limits import SchedulerLimits
from bot.core.metering import BudgetedBackend
from bot.core.outage import OutageTracker
from bot.core.outcomes import JobOutcomes
from bot.core.polling import PollPlanner
from bot.core.pushes import PushInbox
from bot.core.reporter import JobReporter
from bot.core.signals import JobSignals
from bot.core.status import StatusPublisher
from bot.core.store_outage import JobSteps
from bot.observability.metrics import BotMetrics

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class JobContext:
    """The collaborators the runner, the follower and the delivery share (one per scheduler)."""

    backend: BudgetedBackend  # the Backend, each request counted against the API budget
    store: JobSteps  # a running job's reads and writes, which wait out an outage
    status: StatusPublisher
    outcomes: JobOutcomes
    signals: JobSignals
    pushes: PushInbox
    outage: OutageTracker
    planner: PollPlanner
    limits: SchedulerLimits
    reporter: Callable[[], JobReporter]  # the Discord side, attached after construction
    clock: Clock  # monotonic: deadlines within this process
    wall_clock: Clock  # the time of day: deadlines stored across restarts
    metrics: BotMetrics
