"""The bot's Prometheus metrics, kept in a registry of their own (one per bot).

Every label takes values from a short fixed list (outcomes, reason classes, request kinds,
status classes, backend names the operator chose): never a guild, a member or a prompt, so
the number of series stays bounded however many servers use the bot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PREFIX = "animatebot"
# The backend a prediction ran on: "replicate" (the API or a gateway), or a Cog server's name.
DEFAULT_BACKEND = "replicate"

Outcome = Literal["done", "failed", "canceled"]
# An edit's fate: sent, failed, or dropped unsent because a newer value replaced it while it
# waited ("coalesced": the usual case while a send is in flight) or because the job's final
# message came first ("settled"). Edits the Discord budget held back are counted apart.
EditResult = Literal["sent", "failed", "coalesced", "settled"]

QUEUE_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
RUN_TIME_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
LAG_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120)
CONVERSION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 40, 80)


class QueueDepth(Protocol):
    """How many jobs wait and run (the fair queue)."""

    @property
    def queued_count(self) -> int:
        """Jobs waiting."""
        ...

    @property
    def running_count(self) -> int:
        """Jobs running."""
        ...


class OutageState(Protocol):
    """Whether the backend is down (the outage tracker)."""

    @property
    def active(self) -> bool:
        """True while it is down."""
        ...


def status_class(status: int | None) -> str:
    """Group an HTTP status as 2xx/3xx/4xx/5xx, keeping 429 apart; None (no answer): error."""
    if status is None:
        return "error"
    if status == 429:
        return "429"
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class BotMetrics:
    """Every metric the bot exports, and small methods to record what happened."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # Which backend ran a prediction (by id); the app sets this when several can.
        self.resolve_backend: Callable[[str], str] = lambda _prediction_id: DEFAULT_BACKEND
        reg = self.registry
        self.jobs_finished = Counter(
            f"{PREFIX}_jobs_finished",
            "Jobs that ended, by outcome; failures by reason class.",
            ["outcome", "reason"],
            registry=reg,
        )
        self.jobs_queued = Gauge(
            f"{PREFIX}_jobs_queued", "Jobs waiting for their turn now.", registry=reg
        )
        self.jobs_running = Gauge(
            f"{PREFIX}_jobs_running", "Jobs past their turn and not yet ended.", registry=reg
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "From the request to its prediction being submitted.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=reg,
        )
        self.run_time = Histogram(
            f"{PREFIX}_prediction_run_seconds",
            "GPU time of succeeded predictions, as the backend measured it.",
            ["backend"],
            buckets=RUN_TIME_BUCKETS,
            registry=reg,
        )
        self.delivery_lag = Histogram(
            f"{PREFIX}_delivery_lag_seconds",
            "From the prediction's end (the backend's clock) to the result posted.",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.api_requests = Counter(
            f"{PREFIX}_prediction_api_requests",
            "Requests to a prediction backend, by kind and status class.",
            ["backend", "kind", "status_class"],
            registry=reg,
        )
        self.gpu_seconds = Counter(
            f"{PREFIX}_gpu_seconds_billed",
            "GPU seconds the backend reported for ended predictions (any outcome).",
            ["backend"],
            registry=reg,
        )
        self.outage = Gauge(
            f"{PREFIX}_backend_outage",
            "1 while the backend is believed down (queues held), else 0.",
            ["backend"],
            registry=reg,
        )
        self.webhooks = Counter(
            f"{PREFIX}_webhook_deliveries",
            "Webhook deliveries received, accepted or refused, by reason.",
            ["result", "reason"],
            registry=reg,
        )
        self.discord_requests = Counter(
            f"{PREFIX}_discord_requests",
            "HTTP requests to Discord's REST API, by kind and status class.",
            ["kind", "status_class"],
            registry=reg,
        )
        self.discord_rate_limits = Counter(
            f"{PREFIX}_discord_rate_limited",
            "Discord answers of 429 (too many requests), by kind.",
            ["kind"],
            registry=reg,
        )
        self.status_edits = Counter(
            f"{PREFIX}_status_edits",
            "Status message edits: sent, failed, or dropped unsent (coalesced, settled).",
            ["result"],
            registry=reg,
        )
        self.status_edits_deferred = Counter(
            f"{PREFIX}_status_edits_deferred",
            "Times Discord's request budget held a status edit back to try later, by kind.",
            ["kind"],
            registry=reg,
        )
        self.conversions = Counter(
            f"{PREFIX}_ffmpeg_conversions",
            "Outputs converted with FFmpeg to fit Discord, by format and outcome.",
            ["format", "outcome"],
            registry=reg,
        )
        self.conversion_time = Histogram(
            f"{PREFIX}_ffmpeg_conversion_seconds",
            "Wall time of one output's conversion (every attempt until it fits).",
            ["format"],
            buckets=CONVERSION_BUCKETS,
            registry=reg,
        )

    # Jobs -------------------------------------------------------------------------------

    def backend_of(self, prediction_id: str | None) -> str:
        """The `backend` label of a job's prediction."""
        return DEFAULT_BACKEND if prediction_id is None else self.resolve_backend(prediction_id)

    def job_finished(self, outcome: Outcome, reason: str = "none") -> None:
        """Count a job that ended (`reason`: a failure's class, "none" otherwise)."""
        self.jobs_finished.labels(outcome=outcome, reason=reason).inc()

    def watch(self, queue: QueueDepth, outage: OutageState, backend: str = DEFAULT_BACKEND) -> None:
        """Read the queue's depth and the outage at each scrape rather than track each change."""
        self.jobs_queued.set_function(lambda: float(queue.queued_count))
        self.jobs_running.set_function(lambda: float(queue.running_count))
        self.outage.labels(backend=backend).set_function(lambda: 1.0 if outage.active else 0.0)

    def watch_backend(self, backend: str, down: Callable[[], bool]) -> None:
        """Read at each scrape whether another backend (a Cog server) is down."""
        self.outage.labels(backend=backend).set_function(lambda: 1.0 if down() else 0.0)

    def waited(self, seconds: float) -> None:
        """Record how long a job waited for its turn."""
        self.queue_wait.observe(max(0.0, seconds))

    def ran(self, seconds: float, backend: str = DEFAULT_BACKEND) -> None:
        """Record a succeeded prediction's run time."""
        self.run_time.labels(backend=backend).observe(max(0.0, seconds))

    def billed(self, seconds: float | None, backend: str = DEFAULT_BACKEND) -> None:
        """Add GPU seconds billed for an ended prediction."""
        if seconds is not None and seconds > 0:
            self.gpu_seconds.labels(backend=backend).inc(seconds)

    def delivered(self, lag: float) -> None:
        """Record the time from a prediction's end to its result being posted."""
        self.delivery_lag.observe(max(0.0, lag))

    # Requests ---------------------------------------------------------------------------

    def api_request(self, kind: str, status: int | None, backend: str = DEFAULT_BACKEND) -> None:
        """Count one request to a prediction backend (`status` None: no answer)."""
        self.api_requests.labels(
            backend=backend, kind=kind, status_class=status_class(status)
        ).inc()

    def webhook(self, accepted: bool, reason: str) -> None:
        """Count one webhook delivery."""
        self.webhooks.labels(result="accepted" if accepted else "refused", reason=reason).inc()

    def discord_request(self, kind: str, status: int | None) -> None:
        """Count one request to Discord, and a 429 apart."""
        self.discord_requests.labels(kind=kind, status_class=status_class(status)).inc()
        if status == 429:
            self.discord_rate_limits.labels(kind=kind).inc()

    def status_edit(self, result: EditResult) -> None:
        """Count one status edit sent, failed or dropped unsent."""
        self.status_edits.labels(result=result).inc()

    def status_edit_deferred(self, kind: str) -> None:
        """Count one status edit the Discord budget refused for now (`kind`: stage, eta...)."""
        self.status_edits_deferred.labels(kind=kind).inc()

    @contextlib.contextmanager
    def counting_edit(self) -> Iterator[None]:
        """Count the status edit sent in the block as sent, or as failed if it raises."""
        try:
            yield
        except Exception:
            self.status_edit("failed")
            raise
        self.status_edit("sent")

    def conversion(self, fmt: str, outcome: str, seconds: float) -> None:
        """Count one conversion (`outcome`: fitted, too_big, failed, canceled) and its time."""
        self.conversions.labels(format=fmt, outcome=outcome).inc()
        self.conversion_time.labels(format=fmt).observe(max(0.0, seconds))

    # Exposition -------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
