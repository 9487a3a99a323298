"""`animate-bot check` for one Cog server: its health, and whether it serves this model."""

from __future__ import annotations

import aiohttp

from bot.backends.cog.health import refusal
from bot.backends.cog.servers import BROKEN, USABLE, missing_inputs
from bot.backends.probing import Probe, Unanswered, get_once


async def probe_server(http: aiohttp.ClientSession, base_url: str) -> Probe:
    """Read a server's health and schema once, as a row of the check's table."""
    try:
        status, body = await get_once(
            http, f"{base_url}/health-check", {}, service="the Cog server", setting="COG_URLS"
        )
    except Unanswered as exc:
        return Probe(False, str(exc))
    health = body.get("status") if isinstance(body, dict) else None
    if status != 200 or not isinstance(health, str):
        return Probe(False, f"{base_url} answered HTTP {status}, not a Cog health check")
    if health in BROKEN:
        return Probe(False, f"{health} at {base_url}: it gets no work until it is READY")
    try:
        _, schema = await get_once(
            http, f"{base_url}/openapi.json", {}, service="the Cog server", setting="COG_URLS"
        )
    except Unanswered as exc:
        return Probe(False, f"{health}, but its schema could not be read ({exc})")
    missing = missing_inputs(schema)
    if missing:
        return Probe(False, f"{health} at {base_url}, but {refusal(missing)}")
    takes = "takes this model's inputs" if missing is not None else "gives no input schema"
    ok = health in USABLE or health == "STARTING"
    return Probe(ok, f"{health} at {base_url}; {takes}")
