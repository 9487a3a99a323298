"""Reading COG_URLS: `name=url` or `url`, comma-separated, each an http(s) server address."""

from __future__ import annotations

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
        servers.append((name, str(parsed).rstrip("/")))
    return tuple(servers)
