"""Keep secrets out of logs and out of anything shown to people."""

from __future__ import annotations

import logging
import re
import threading

from bot.core.jobs import INVISIBLE

log = logging.getLogger(__name__)

MASK = "[redacted]"
# Shorter values would turn up by chance in ordinary text and mask it for no gain.
MIN_SECRET_LENGTH = 6

# A credential value (never one masked already, so that masking twice changes nothing).
_VALUE = rf"(?!{re.escape(MASK)})[^\s'\",;}}\]]+"
# `Bearer x` anywhere, and any `Authorization: <scheme> x` / `'Authorization': 'x'`.
_BEARER = re.compile(rf"(?i)\b(bearer\s+){_VALUE}")
_AUTH_HEADER = re.compile(
    rf"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|bot|token|basic)\s+)?+){_VALUE}"
)
# Credentials carried in a URL: `https://user:password@host/`.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
# Query parameters that usually carry a credential.
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:[a-z0-9_-]*(?:token|key|secret|signature|sig|password|auth|credential)s?)=)"
    r"[^&\s#'\"]+"
)
# Discord interaction and webhook tokens travel in the path: `/webhooks/{id}/{token}/...`,
# `/interactions/{id}/{token}/callback`; an interaction's payload carries `'token': '...'`.
_PATH_TOKEN = re.compile(rf"(?i)(/(?:webhooks|interactions)/\d+/)(?!{re.escape(MASK)})[^/\s?#'\"]+")
_TOKEN_KEY = re.compile(
    rf"(?i)(['\"](?:[a-z0-9]+_)?token['\"]\s*:\s*['\"])(?!{re.escape(MASK)})[^'\"]+"
)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Remember a secret so that `redact` masks it wherever it appears."""
    global _secrets  # noqa: PLW0603 - one process-wide list, read by every log record
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value not in _secrets:
            # Longest first, so a secret containing another is masked whole.
            _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def forget_secrets() -> None:
    """Drop every registered secret (for tests that register their own)."""
    global _secrets  # noqa: PLW0603 - see register_secret
    with _lock:
        _secrets = ()


def redact(text: str) -> str:
    """Mask registered secrets, bearer credentials, credentials in URLs and Discord tokens."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _BEARER.sub(rf"\1{MASK}", text)
    text = _AUTH_HEADER.sub(rf"\1{MASK}", text)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _PATH_TOKEN.sub(rf"\1{MASK}", text)
    text = _TOKEN_KEY.sub(rf"\1{MASK}", text)
    return _SECRET_QUERY.sub(rf"\1{MASK}", text)


def scrub(text: str) -> str:
    """Drop invisible characters, then mask secrets: none can split a secret past the mask."""
    return redact(INVISIBLE.sub("", text))


class RedactingFilter(logging.Filter):
    """A handler filter that masks secrets in the whole formatted record, traceback included."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the record once, mask it, and keep the masked text as its message."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the record, nor leak its args
            message = f"{record.msg!r} (unformattable arguments)"
        if record.exc_info and not record.exc_text:
            # Formatting the traceback here lets the mask reach exception messages too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = scrub(message)
        record.args = None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        # The formatter would render exc_info again; the masked exc_text stands in for it.
        record.exc_info = None
        return True


def install(handlers: list[logging.Handler], secrets: list[str]) -> None:
    """Register the secrets and mask them in everything these handlers write."""
    for secret in secrets:
        register_secret(secret)
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
