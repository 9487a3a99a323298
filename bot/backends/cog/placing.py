"""Placing a prediction on a server with a webhook: what each answer of the PUT means.

202 (or 200, the answer of a PUT re-sent while it runs) places it; 409 means the server is
busy with another prediction, 503 that it is not set up: either way another server is tried.
400 and 422 are the input's fault and fail the job. Any other answer (a redirect, 404 or 405
from a wrong URL or an old cog) is the server's: it is refused and another is tried. An answer
lost on the way is asked for again by the same PUT, which, while the prediction runs, answers
its state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from bot.backends.base import Prediction, PredictionAPIError
from bot.backends.cog.servers import Answer, CogHTTP, CogServer, error_detail
from bot.backends.cog.tracking import Tracked

log = logging.getLogger(__name__)

INPUT_REFUSED = frozenset({400, 422})  # the server read the input and would not run it


async def put_with_webhook(
    http: CogHTTP,
    server: CogServer,
    tracked: Tracked,
    webhook: str,
    *,
    abandon: Callable[[CogServer, str], None],
) -> Prediction | None:
    """PUT the prediction; its state once placed, None if this server cannot take it now."""
    for _ in range(2):
        try:
            answer = await http.put_async(
                server, tracked.server_id, tracked.api_input, webhook=webhook
            )
        except aiohttp.ClientConnectorError:
            server.failures += 1
            return None  # nothing was sent
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("Cog server %s: create unanswered (%s)", server.name, exc)
            continue  # while it runs, the same PUT answers its state
        return read_placement(server, tracked, answer)
    server.failures += 1
    abandon(server, tracked.server_id)  # it may have started: the job is placed elsewhere
    return None


def read_placement(server: CogServer, tracked: Tracked, answer: Answer) -> Prediction | None:
    """Read a create's answer: placed, busy, not ready, or refused."""
    if answer.status in (200, 201, 202):
        if not _same_input(answer.body, tracked.api_input):
            log.warning("Cog server %s runs another client's %s", server.name, tracked.server_id)
            server.foreign_busy = True
            return None
        tracked.update(answer.body)
        tracked.accepted = True
        return tracked.state
    if answer.status == 409:
        server.foreign_busy = True  # until a health check finds it READY again
        return None
    if answer.status >= 500:
        if answer.status == 503:
            server.health = "STARTING"  # setup is not done: no work until a check says READY
        return None
    if answer.status in INPUT_REFUSED:
        raise PredictionAPIError(error_detail(answer), status=answer.status)
    refuse_server(server, answer)
    return None


def refuse_server(server: CogServer, answer: Answer) -> None:
    """Give no more work to a server that answers a create as no Cog server of ours would."""
    server.refused = (
        f"it answered {answer.status} to a prediction; "
        "check its URL in COG_URLS and that it runs cog 0.23 or later"
    )
    log.error("Cog server %s is refused: %s", server.describe(), server.refused)


def _same_input(body: object, api_input: Mapping[str, Any]) -> bool:
    """True unless the server echoes an input that differs from ours in what we sent."""
    echoed = body.get("input") if isinstance(body, dict) else None
    if not isinstance(echoed, dict):
        return True  # nothing to compare (an answer without the input)
    return all(echoed.get(name) == value for name, value in api_input.items())
