"""Reading COG_URLS: `name=url` or `url`, comma-separated, each an http(s) server address."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import yarl

from bot.backends.cog.ids import SERVER_NAME


def parse_cog_urls(text: str) -> tuple[tuple[str, str], ...]:
    """Return (name, base URL) per server; ValueError naming the first entry that is wrong."""
    servers: list[tuple[str, str]] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        if not sep or "://" in name:
            name, url = f"cog-{len(servers) + 1}", entry
        name, url = name.strip(), url.strip()
        try:
            parsed = yarl.URL(url)
        except ValueError:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"{entry!r} is not a URL (http://host:port or name=http://host:port)")
        if parsed.query_string or parsed.fragment:
            raise ValueError(f"{entry!r} must be a server's base URL, without ?query or #fragment")
        if not SERVER_NAME.match(name):
            raise ValueError(f"{name!r} is not a server name (letters, digits, . _ -)")
        if any(name == known for known, _ in servers):
            raise ValueError(f"names the server {name!r} twice")
        base = str(parsed).rstrip("/")
        twin = next((known for known, known_url in servers if known_url == base), None)
        if twin is not None:
            raise ValueError(f"{name!r} and {twin!r} are the same server ({base})")
        servers.append((name, base))
    return tuple(servers)


def unreachable_callbacks(callback_url: str, servers: Sequence[tuple[str, str]]) -> list[str]:
    """The servers, not on this machine, that cannot reach a callback URL on loopback."""
    if not _is_loopback(yarl.URL(callback_url).host):
        return []
    return [name for name, url in servers if not _is_loopback(yarl.URL(url).host)]


def _is_loopback(host: str | None) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1."""
    if host is None:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
