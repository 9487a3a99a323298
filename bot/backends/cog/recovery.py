"""Finding a prediction again: one whose create's answer was lost, or one from before a restart.

With webhooks a running prediction is asked for by the same PUT, which answers its state while
it runs (placing.py checks that the input it echoes is ours). A server running nothing cannot
have it, and a PUT there would start it: only BUSY servers are asked. Without a callback URL
the request held open was the prediction's only link, and it ended with the bot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from bot.backends.base import Prediction, current_attempt
from bot.backends.cog.ids import CogPredictionId, clean_key

if TYPE_CHECKING:
    from bot.backends.cog.pool import CogPool


async def find_again(
    pool: CogPool,
    api_input: Mapping[str, Any],
    *,
    accept: Callable[[Prediction], Awaitable[bool]] | None = None,
) -> Prediction | None:
    """This run's prediction on a busy server, found by its id; None if none has it."""
    attempt = current_attempt.get()
    if attempt is None:
        return None
    key = clean_key(attempt.key)
    for server in pool.servers:
        tracked = pool.running(str(CogPredictionId(server.name, key)))
        if tracked is not None:
            return tracked.state
    if pool.callback_url is None:
        return None  # a held request that was cut off ended its prediction with it
    await pool.health.check_all()
    for server in pool.servers:
        if server.usable and server.health == "BUSY" and not server.running:
            found = await pool.reattach(server, CogPredictionId(server.name, key), api_input)
            if found is not None and (accept is None or await accept(found)):
                return found
    return None


async def recover(pool: CogPool, prediction_id: CogPredictionId) -> Prediction:
    """Find a prediction from before a restart on its server, or report it lost."""
    server = next((s for s in pool.servers if s.name == prediction_id.server), None)
    attempt = current_attempt.get()
    reason = "the bot restarted while the GPU server ran it"
    if server is None:
        return lost(prediction_id, "its GPU server is no longer configured")
    if pool.callback_url is None or attempt is None:
        return lost(prediction_id, reason)  # its held request ended with the bot
    await pool.health.check(server)
    if not server.usable:
        return lost(prediction_id, server.unavailable())
    found = await pool.reattach(server, prediction_id, attempt.api_input)
    return found if found is not None else lost(prediction_id, reason)


def lost(prediction_id: CogPredictionId, reason: str) -> Prediction:
    """The state of a prediction that cannot be found again (its output is gone with it)."""
    return Prediction(
        id=str(prediction_id), status="failed", error=reason, lost=True, data_removed=True
    )
