"""The shared queue seam: jobs claimed under leases, for several processes on one database.

One process on SQLite needs none of this: its fair queue decides alone. Processes that share
a store (PostgreSQL) each hold a lease on the jobs they work on; the claim, made in the
database, enforces the limits for all of them together, and a lease that is not renewed
(its process died) lets another process take the job over from its stored state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from bot.core.jobs import GenerationRequest, Job

JOB_LEASE_SECONDS = 30.0  # the default of the setting of that name


class ShardsTaken(Exception):
    """Another live process runs one of the shards this one was told to run."""


class EventKind(StrEnum):
    """What one process tells the others (LISTEN/NOTIFY); a missed one is caught by polling."""

    CANCEL = "cancel"  # a Cancel was stored for a job another process may run
    PUSH = "push"  # a webhook delivery, for whichever process follows the prediction
    CLAIMED = "claimed"  # a queued job left its queue: its server's places moved
    FREED = "freed"  # a slot or a job became free: try claiming
    SETTINGS = "settings"  # a server's owner changed a setting


@dataclass(frozen=True, slots=True)
class SharedEvent:
    """One announcement between processes."""

    kind: EventKind
    job_id: int | None = None
    guild_id: int | None = None
    data: dict[str, Any] | None = None  # a pushed prediction, when it fits the payload


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a lease renewal learned: the jobs still ours, and which of them to cancel."""

    held: frozenset[int]
    cancel_wanted: frozenset[int]


@dataclass(frozen=True, slots=True)
class Claim:
    """The jobs a claim leased, and those of them a Cancel was already asked for."""

    jobs: list[Job]
    cancel_wanted: frozenset[int]


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    """The limits a claim enforces for every process together."""

    running_total: int
    running_per_guild: Callable[[int], int]


class SharedJobs(Protocol):
    """Jobs shared by several processes, each claimed under a lease the claimer renews."""

    owner: str  # who holds this process's leases
    lease_seconds: float

    async def add_held(
        self,
        *,
        guild_id: int,
        channel_id: int,
        requester_id: int,
        request: GenerationRequest,
        member_cap: int,
        parent_job_id: int | None = None,
        upload_limit: int | None = None,
        interaction_token: str | None = None,
    ) -> Job | None:
        """Record a queued job held by this process until `release`; None past the member cap."""
        ...

    async def release(self, job_id: int) -> None:
        """Let a held queued job be claimed by any process."""
        ...

    async def claim(self, limits: ClaimLimits, most: int, *, take_lapsed: bool = True) -> Claim:
        """Claim up to `most` queued jobs, servers in turn, within the limits; lease them.

        `take_lapsed` False: leave jobs whose lease lapsed (their owner may yet renew it).
        """
        ...

    async def take_over(self) -> Claim:
        """Lease every started job whose lease expired (its process died); return them."""
        ...

    async def renew(self) -> Renewal:
        """Extend this process's leases; say which jobs are still ours and which to cancel."""
        ...

    async def let_go(self, job_id: int) -> None:
        """Drop the lease of a job this process stopped working on, and tell the others."""
        ...

    async def let_go_all(self) -> None:
        """End every lease of this process at once (a clean stop): others take over now."""
        ...

    async def cancel(self, job_id: int, reason: str) -> Job | None:
        """Cancel a job no process has claimed yet; None if it is claimed, running or ended."""
        ...

    async def request_cancel(self, job_id: int) -> bool:
        """Store that a started job should stop, for whichever process runs it; False if ended."""
        ...

    async def queued_for(self, shard_count: int, shard_ids: Sequence[int]) -> list[int]:
        """Return the ids of these shards' servers' unclaimed queued jobs (not others' holds)."""
        ...

    async def jobs(self, job_ids: Sequence[int]) -> list[Job]:
        """Return these jobs, oldest first."""
        ...

    async def requeue_lapsed(self) -> int:
        """Make queued jobs whose hold or claim lapsed claimable again; return how many."""
        ...

    async def pending_for(self, guild_id: int, requester_id: int) -> int:
        """Count a member's unfinished jobs in a server, whichever process holds them."""
        ...

    async def announce(self, event: SharedEvent) -> None:
        """Tell every process (this one included) about an event."""
        ...

    def listen(self, handler: Callable[[SharedEvent], Awaitable[None] | None]) -> None:
        """Call `handler` with every event announced from now on."""
        ...

    async def live_processes(self) -> int:
        """Record that this process lives; return how many processes do (itself included)."""
        ...
