"""How much work may run at once, each server's own limits, and who may queue more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class QueueFull(Exception):
    """The member already has as many requests waiting as the server allows."""


def member_cap_reached(limit: int) -> QueueFull:
    """The refusal of a member who already has `limit` requests waiting or running."""
    plural = "request" if limit == 1 else "requests"
    return QueueFull(
        f"You already have {limit} {plural} waiting in this server; "
        "wait for one to finish or cancel one first."
    )


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """How much work may run at once and how much a member may queue."""

    running_per_guild: int = 1
    running_total: int = 4
    queued_per_member: int = 3
    prediction_timeout: float = 1800.0
    start_timeout: float = 600.0
    outage_patience: float = 1800.0  # how long a running job waits out an outage
    max_download_bytes: int = 100 * 1024 * 1024
    status_interval: float = 5.0  # at most one status edit per job this often
    # How often a running prediction's progress is read when polling; 0: only aimed polls.
    progress_poll_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class GuildLimits:
    """One server's own limits, which replace the global per-server ones."""

    running: int
    queued_per_member: int


class GuildPolicy(Protocol):
    """Each server's limits and admission rules (its owner's settings, bans, quotas)."""

    def limits(self, guild_id: int) -> GuildLimits:
        """Return the server's limits; called often, so it must not do I/O."""
        ...

    async def admit(self, guild_id: int, requester_id: int) -> None:
        """Raise QueueFull, with a sentence for the member, if the request may not be queued."""
        ...
