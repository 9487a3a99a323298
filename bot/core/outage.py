"""Whether the prediction API is down: while it is, only running jobs keep trying."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class OutageTracker:
    """Remembers since when the API has been failing, and says when that starts or ends."""

    def __init__(self, clock: Callable[[], float], on_change: Callable[[bool], None]) -> None:
        self._clock = clock
        self._on_change = on_change  # called with True as an outage starts, False as it ends
        self.since: float | None = None

    @property
    def active(self) -> bool:
        """True while the API is believed to be down."""
        return self.since is not None

    def holds_queue(self, running: int) -> bool:
        """True if queued work must wait: the API is down and a running job is probing it."""
        return self.since is not None and running > 0

    def enter(self) -> None:
        """Note that the API failed; the first failure starts the outage."""
        if self.since is None:
            log.warning("the prediction API is unavailable; holding the queues")
            self.since = self._clock()
            self._on_change(True)

    def leave(self) -> None:
        """Note that the API answered; an outage under way ends."""
        if self.since is not None:
            log.info("the prediction API is back after %.0f s", self._clock() - self.since)
            self.since = None
            self._on_change(False)
