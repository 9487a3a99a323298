"""Events between processes as PostgreSQL NOTIFY payloads: small JSON objects.

A payload must stay under 8000 bytes; an event whose data would not fit (a pushed prediction
with a long input) is announced without it, and the process concerned catches up by polling.
"""

from __future__ import annotations

import json
import logging

from bot.storage.leases import EventKind, SharedEvent

log = logging.getLogger(__name__)

PAYLOAD_LIMIT = 7000


def payload_of(event: SharedEvent) -> str:
    """The event as NOTIFY text, without data that would not fit."""
    fields: dict[str, object] = {"k": event.kind.value}
    if event.job_id is not None:
        fields["j"] = event.job_id
    if event.guild_id is not None:
        fields["g"] = event.guild_id
    if event.data is not None:
        with_data = json.dumps({**fields, "d": event.data}, separators=(",", ":"))
        if len(with_data.encode()) <= PAYLOAD_LIMIT:
            return with_data
    return json.dumps(fields, separators=(",", ":"))


def event_from(payload: str) -> SharedEvent | None:
    """Read an announced event; None for one this version does not know."""
    try:
        fields = json.loads(payload)
        kind = EventKind(fields["k"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an event from another process: %.80s", payload)
        return None
    job_id, guild_id, data = fields.get("j"), fields.get("g"), fields.get("d")
    return SharedEvent(
        kind,
        job_id if isinstance(job_id, int) else None,
        guild_id if isinstance(guild_id, int) else None,
        data if isinstance(data, dict) else None,
    )
