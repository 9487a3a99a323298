"""One-shot GETs for `animate-bot check`: an answer, or one sentence saying why none came."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

# Short: an operator waits at a prompt, and a healthy service answers in well under a second.
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Probe:
    """What one check of a remote service found."""

    ok: bool
    detail: str


class Unanswered(Exception):
    """A request got no HTTP answer; the message says why, for the table."""


async def get_once(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    service: str,
    setting: str,
) -> tuple[int, Any]:
    """GET once, without following redirects; return the status and the JSON body (or None)."""
    try:
        # No redirects: a token must not travel to another origin (see DESIGN.md).
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, await _json_or_none(response)
    except aiohttp.InvalidURL:
        raise Unanswered(f"{url} is not a valid URL; check {setting}") from None
    except TimeoutError:
        raise Unanswered(
            f"{service} at {url} did not answer within {REQUEST_TIMEOUT_SECONDS:g} s"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise Unanswered(f"could not reach {service} at {url} ({reason(exc)})") from None
    except ValueError as exc:
        # aiohttp refuses to send, for one, an Authorization header to a URL with user:password@.
        raise Unanswered(f"cannot send a request to {url} ({reason(exc)})") from None


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    """Parse the body as JSON, or return None when it is not JSON."""
    try:
        return await response.json(content_type=None)
    except ValueError:
        return None


def reason(exc: BaseException) -> str:
    """One line saying what went wrong, naming the exception when it has no message."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
