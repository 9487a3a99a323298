"""When to poll a running prediction: aimed at the moment it should end, so few polls are spent."""

from __future__ import annotations

import statistics
from collections import defaultdict, deque

from bot.eta import Estimate, instant
from bot.predictions import Prediction
from bot.progress import FRAME_COUNT, Phase, Progress, parse_progress

# Aim this far past the expected end: an early poll costs a request, a late one only this lag.
MARGIN = 0.25
# Without a learned tail, aim this far into the frame bar, where its rate can be read.
FIRST_FRAMES = 1.0
MIN_DELAY = 0.2
MAX_DELAY = 120.0  # estimates can be wrong: look again at least this often
# With webhooks the end is pushed; a poll this long after the foretold end catches a lost push.
SAFETY_GRACE = 30.0
TAILS_KEPT = 20


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
