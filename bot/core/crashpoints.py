"""Named points where a test build can kill the process, to prove crash recovery.

The test suite sets `ANIMATE_CRASH_AT=<point>` on a real bot process; when the job reaches
that point the process dies with SIGKILL, as it would on a power cut or an OOM kill, with no
chance to clean up. Without the variable (every real deployment) each point is a dictionary
lookup and nothing else.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

CRASH_ENV = "ANIMATE_CRASH_AT"

# Every point, in the order a job passes them; see docs/job-states.md.
POINTS = (
    "accepted",  # job stored (with the interaction's token), before the interaction is deferred
    "acknowledged",  # deferred ("thinking…" shown), its message id not stored yet
    "submitted",  # marked submitted, create not yet sent
    "created",  # the API answered the create; its prediction id is not stored yet
    "running",  # prediction id stored, before the first poll
    "succeeded",  # the prediction succeeded; `delivering` not stored yet
    "delivering",  # `delivering` stored, output not downloaded yet
    "downloaded",  # output downloaded, not posted yet
    "posted",  # result posted, its message id not stored yet
)


def crash_point(name: str) -> None:
    """Kill this process at once if the test switch names this point."""
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash point %r reached: killing the process", name)
        os.kill(os.getpid(), signal.SIGKILL)
