"""When to poll a running prediction: aimed at the moment it should end, so few polls are spent."""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from collections.abc import Callable

from bot.backends.base import Prediction
from bot.core.eta import Estimate, TimingHistory, instant
from bot.core.jobs import Job
from bot.core.progress import FRAME_COUNT, Phase, Progress, parse_progress

# Aim this far past the expected end: an early poll costs a request, a late one only this lag.
MARGIN = 0.25
# Without a learned tail, aim this far into the frame bar, where its rate can be read.
FIRST_FRAMES = 1.0
MIN_DELAY = 0.2
MAX_DELAY = 120.0  # estimates can be wrong: look again at least this often
# With webhooks the end is pushed; a poll this long after the foretold end catches a lost push.
SAFETY_GRACE = 30.0
TAILS_KEPT = 20
# With progress polling, a create foretold to end within this many progress intervals is held
# to its end: a progress poll just before the result would show little and cost a request.
HOLD_STRETCH = 1.5
HOLD_MAX = 60.0  # the API holds a create at most this long


class TailHistory:
    """How long predictions run after their sampling bar ends (frames, upload), per model."""

    def __init__(self, keep: int = TAILS_KEPT) -> None:
        self._tails: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=keep))

    def learn(self, model: str, steps: int, prediction: Prediction) -> None:
        """Measure a succeeded prediction: its run time minus its sampling time."""
        run_time = prediction.predict_time
        step_seconds = parse_progress(prediction.logs, steps).step_seconds
        if run_time is None or step_seconds is None:
            return
        self._tails[model].append(max(0.0, run_time - steps * step_seconds))

    def tail(self, model: str) -> float | None:
        """The median tail of a model's recent runs, or None before the first one."""
        samples = self._tails.get(model)
        return statistics.median(samples) if samples else None


class PollPlanner:
    """Times each running job's next poll from its progress, measured runs and the API's clock."""

    def __init__(
        self,
        history: TimingHistory,
        *,
        wall_clock: Callable[[], float],
        pushes: Callable[[], bool],
    ) -> None:
        self._history = history
        self._wall = wall_clock
        self._pushes = pushes  # the backend pushes each end: a poll is only the safety net
        self.tails = TailHistory()  # what follows sampling, learned from each success
        self._offsets: dict[int, float] = {}  # running job -> API clock minus ours

    def delay(self, job: Job, prediction: Prediction, progress: Progress, polls: int) -> float:
        """Seconds until the next poll: aimed just past the end the logs and history foretell.

        When the API pushes the end (webhooks), a poll is only the safety net for a lost push.
        """
        delay = poll_delay(
            prediction,
            progress,
            steps=job.request.steps,
            now=self._wall() + self.clock_offset(job, prediction),
            estimate=self._history.estimate(job.request.model, job.request.steps),
            tail=self.tails.tail(job.request.model),
            polls=polls,
        )
        return safety_delay(delay) if self._pushes() else delay

    def hold(self, job: Job, progress_seconds: float) -> float | None:
        """How long to hold the create, with progress read every `progress_seconds` (0: never).

        Held to the foretold end when that comes within about one progress interval (the
        result then needs no poll); otherwise just one interval, so the first progress shows.
        None: the backend's own choice (no progress polls, or the end is pushed).
        """
        if progress_seconds <= 0 or self._pushes():
            return None
        estimate = self._history.estimate(job.request.model, job.request.steps)
        if estimate is not None and estimate.total + MARGIN <= progress_seconds * HOLD_STRETCH:
            return min(HOLD_MAX, estimate.total + 2 * MARGIN)
        return min(HOLD_MAX, progress_seconds)

    def learn(self, job: Job, prediction: Prediction) -> None:
        """Learn the tail of a succeeded prediction."""
        self.tails.learn(job.request.model, job.request.steps, prediction)

    def clock_offset(self, job: Job, prediction: Prediction) -> float:
        """How far the API's clock runs ahead of ours, read from the creates (0 if unknown)."""
        created = instant(prediction.created_at)
        if created is not None and job.submitted_at is not None:
            # Polls are timed from the API's timestamps; a skewed host clock must not shift them.
            self._offsets[job.id] = max(-300.0, min(300.0, created - job.submitted_at))
        # Each reading also holds the time from recording the submit to the API receiving the
        # create (a busy database, a connection to open): a quarter second of that would aim
        # every poll too early. The smallest reading across the running jobs has the least.
        return min(self._offsets.values(), default=0.0)

    def forget(self, job_id: int) -> None:
        """Drop a job that left the queues."""
        self._offsets.pop(job_id, None)


def poll_delay(
    prediction: Prediction,
    progress: Progress,
    *,
    steps: int,
    now: float,
    estimate: Estimate | None,
    tail: float | None,
    polls: int,
) -> float:
    """Seconds until the next poll of an unfinished prediction (`now` on the API's clock)."""
    delay = _seconds_to_end(prediction, progress, steps, now, estimate, tail, polls)
    return min(MAX_DELAY, max(MIN_DELAY, delay))


def safety_delay(delay: float) -> float:
    """The safety-net poll when the API pushes the end: well after the adaptive poll's time."""
    return delay + SAFETY_GRACE


def _seconds_to_end(
    prediction: Prediction,
    progress: Progress,
    steps: int,
    now: float,
    estimate: Estimate | None,
    tail: float | None,
    polls: int,
) -> float:
    """The best guess of when the prediction ends, plus the margin, or a backoff if unknown."""
    created = instant(prediction.created_at)
    started = instant(prediction.started_at)
    if prediction.status == "starting":
        # No GPU yet (the create held a minute already): history says how long queues last.
        if estimate is not None and created is not None:
            left = created + estimate.total - now
            if left > 0:
                return left + MARGIN
        return min(15.0, 2.0 * 1.5**polls)
    step = progress.step_seconds
    if started is not None and step is not None:
        # Reckoned from the start, not from the last log line, which may be a step old.
        sampling_end = started + steps * step
        if tail is not None:
            end = sampling_end + tail
        elif progress.phase is Phase.RENDERING and progress.frame_seconds is not None:
            end = sampling_end + FRAME_COUNT * progress.frame_seconds
        else:
            # Nothing learned yet: look into the frame bar, whose rate tells the rest.
            end = max(sampling_end, now) + FIRST_FRAMES
        left = end - now
        if left > 0:
            return left + MARGIN
        return min(5.0, 0.5 * 1.5**polls)  # past its expected end: look again soon
    if estimate is not None and started is not None:
        left = started + estimate.run_time - now
        if left > 0:
            return left + MARGIN
    return min(5.0, 1.0 * 1.5**polls)
