"""What `animate-bot check` asks Replicate's API (or a gateway): the token, the signing secret."""

from __future__ import annotations

import aiohttp

from bot.backends.probing import Probe, Unanswered, get_once
from bot.backends.webhooks import SigningKey


async def check_token(http: aiohttp.ClientSession, *, base: str, token: str) -> Probe:
    """List predictions with the bearer token: the cheapest authenticated request."""
    url = f"{base}/predictions"
    try:
        status, body = await _get(http, url, token)
    except Unanswered as exc:
        return Probe(False, str(exc))
    detail = body.get("detail") if isinstance(body, dict) else None
    said = f": {' '.join(detail.split())}" if isinstance(detail, str) and detail.strip() else ""
    if status in (401, 403):
        return Probe(False, f"the API refused REPLICATE_API_TOKEN (HTTP {status}{said})")
    if 300 <= status < 400:
        return Probe(False, f"{url} redirects (HTTP {status}); check REPLICATE_API_BASE")
    if status != 200:
        return Probe(False, f"the API answered HTTP {status} at {url}{said}")
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        return Probe(False, f"{url} answered 200 but not with a prediction list")
    return Probe(True, f"token accepted at {base}")


async def check_signing_secret(http: aiohttp.ClientSession, *, base: str, token: str) -> Probe:
    """Fetch the signing secret that webhook deliveries are checked with, and parse it."""
    url = f"{base}/webhooks/default/secret"
    try:
        status, body = await _get(http, url, token)
    except Unanswered as exc:
        return Probe(False, str(exc))
    key = body.get("key") if isinstance(body, dict) else None
    if status != 200 or not isinstance(key, str):
        return Probe(False, f"no signing secret at {url} (HTTP {status})")
    try:
        SigningKey.from_secret(key)
    except ValueError as exc:
        return Probe(False, f"the signing secret at {url} is unusable: {exc}")
    return Probe(True, "signing secret fetched")


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, object]:
    """GET a URL of the prediction API with the bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    return await get_once(
        http, url, headers, service="the prediction API", setting="REPLICATE_API_BASE"
    )
