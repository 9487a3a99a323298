"""Count discord.py's REST requests through an aiohttp trace on its own session.

discord.py takes an `http_trace` (an `aiohttp.TraceConfig`) for exactly this, so nothing of
the library is patched. Each request is named by what it does (a short fixed list), never by
the ids in its path.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import aiohttp
import yarl

from bot.observability.metrics import BotMetrics

_ID = r"\d+"
_TOKEN = r"[^/]+"
# (method, path after the API version, kind); the first match names the request.
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), kind)
    for method, pattern, kind in (
        ("POST", rf"/interactions/{_ID}/{_TOKEN}/callback", "interaction_response"),
        ("GET", rf"/webhooks/{_ID}/{_TOKEN}/messages/[^/]+", "interaction_read"),
        ("PATCH", rf"/webhooks/{_ID}/{_TOKEN}/messages/[^/]+", "interaction_edit"),
        ("DELETE", rf"/webhooks/{_ID}/{_TOKEN}/messages/[^/]+", "interaction_delete"),
        ("POST", rf"/webhooks/{_ID}/{_TOKEN}", "interaction_followup"),
        ("POST", rf"/channels/{_ID}/messages", "message_create"),
        ("GET", rf"/channels/{_ID}/messages", "message_list"),
        ("GET", rf"/channels/{_ID}/messages/{_ID}", "message_read"),
        ("PATCH", rf"/channels/{_ID}/messages/{_ID}", "message_edit"),
        ("DELETE", rf"/channels/{_ID}/messages/{_ID}", "message_delete"),
        ("POST", rf"/channels/{_ID}/typing", "typing"),
        ("GET", rf"/channels/{_ID}", "channel_read"),
        ("POST", r"/users/@me/channels", "dm_open"),
        ("PUT", rf"/applications/{_ID}(/guilds/{_ID})?/commands", "commands_sync"),
        ("GET", rf"/applications/{_ID}(/guilds/{_ID})?/commands", "commands_read"),
        ("GET", r"/gateway(/bot)?", "gateway"),
        ("GET", r"/users/@me", "login"),
        ("GET", r"/oauth2/applications/@me", "application"),
        ("GET", r"/applications/@me", "application"),
    )
)
_VERSION = re.compile(r"^.*?/v\d+(?=/)")


def request_kind(method: str, url: yarl.URL | str) -> str:
    """Name a Discord REST request by what it does: message_edit, interaction_response..."""
    path = yarl.URL(url).path if isinstance(url, str) else url.path
    # The API base may sit under a prefix of its own (a proxy, a test server): cut to /vN.
    path = _VERSION.sub("", path, count=1)
    for route_method, pattern, kind in _ROUTES:
        if route_method == method.upper() and pattern.fullmatch(path):
            return kind
    return "other"


def discord_trace(metrics: BotMetrics) -> aiohttp.TraceConfig:
    """A trace config that counts every answered or failed request discord.py makes."""

    async def on_end(
        _session: aiohttp.ClientSession,
        _context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        """Count an answered request by kind and status."""
        metrics.discord_request(request_kind(params.method, params.url), params.response.status)

    async def on_exception(
        _session: aiohttp.ClientSession,
        _context: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        """Count a request that got no answer."""
        metrics.discord_request(request_kind(params.method, params.url), None)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    trace.on_request_exception.append(on_exception)
    return trace
