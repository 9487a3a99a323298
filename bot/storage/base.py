"""The Store seam: every read and write the bot needs, whatever database holds them.

A job's state changes are transitions: each names the states it may start from, and raises
InvalidTransition when the job is elsewhere (someone else moved it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.core.eta import Timing
from bot.core.jobs import GenerationRequest, Job


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer bot; this one must not read or write it."""


class InvalidTransition(Exception):
    """A job was not in a state that allows the requested change (someone else moved it)."""


class LeaseLost(InvalidTransition):
    """Another process holds the job's lease now (this one's lapsed): it is theirs to move."""


class StorageUnavailable(Exception):
    """The database did not answer (down, restarting, unreachable, connection lost).

    Raised instead of the driver's own errors, so that the core can tell "try again later"
    from a bug. A write whose answer was lost may still have been made: read the job again
    before acting on it (a transition then either applies or raises InvalidTransition).
    """


@dataclass(frozen=True, slots=True)
class GpuSeconds:
    """GPU seconds split by where they ran: Replicate (paid) or the bot's own Cog servers.

    A job ran on its own servers when its prediction id says so (`cog:<server>:<id>`, see
    bot/backends/cog/ids.py); any other id ran on Replicate or a gateway in front of it.
    """

    replicate: float = 0.0
    own: float = 0.0

    @property
    def total(self) -> float:
        """Every GPU second, wherever it ran."""
        return self.replicate + self.own

    def __add__(self, other: GpuSeconds) -> GpuSeconds:
        """The seconds of both, kind by kind."""
        return GpuSeconds(self.replicate + other.replicate, self.own + other.own)


class JobRecords(Protocol):
    """Jobs and their transitions."""

    async def add_job(
        self,
        *,
        guild_id: int,
        channel_id: int,
        requester_id: int,
        request: GenerationRequest,
        parent_job_id: int | None = None,
        upload_limit: int | None = None,
        interaction_token: str | None = None,
    ) -> Job:
        """Record a new queued job and return it."""
        ...

    async def get(self, job_id: int) -> Job | None:
        """Return one job, or None if there is no such job."""
        ...

    async def unfinished(self) -> list[Job]:
        """Return every job that is not done, failed or canceled, oldest first."""
        ...

    async def set_request_message(self, job_id: int, message_id: int) -> Job:
        """Remember the message that shows the request's status."""
        ...

    async def confirm_lease(self, job_id: int) -> None:
        """Raise LeaseLost if another process holds the job now (before an act that cannot be
        taken back: a create, a post). A store one process owns has nothing to check."""
        ...

    async def mark_submitted(self, job_id: int) -> Job:
        """Queued -> submitted: written before the create request is sent."""
        ...

    async def mark_running(self, job_id: int, prediction_id: str) -> Job:
        """Submitted -> running: the backend accepted the prediction."""
        ...

    async def mark_delivering(
        self, job_id: int, *, predict_time: float | None, model_version: str | None = None
    ) -> Job:
        """Running -> delivering: the prediction succeeded and the result is being posted."""
        ...

    async def mark_rerun(self, job_id: int) -> Job:
        """Running or delivering -> submitted again: the output expired before it was posted."""
        ...

    async def mark_done(self, job_id: int, *, result_message_id: int) -> Job:
        """Delivering -> done: the result message exists."""
        ...

    async def mark_failed(
        self, job_id: int, error: str, *, predict_time: float | None = None
    ) -> Job:
        """Any unfinished state -> failed, with the reason (stored masked) for the requester."""
        ...

    async def mark_canceled(
        self, job_id: int, reason: str | None = None, *, predict_time: float | None = None
    ) -> Job:
        """A pending state -> canceled (with the GPU time billed before it stopped, if any)."""
        ...

    async def mark_deleted(self, job_id: int) -> Job:
        """Record that the result message was deleted."""
        ...

    async def job_for_prediction(self, prediction_id: str) -> int | None:
        """Return the id of the job that owns a prediction, if any."""
        ...

    async def history(
        self,
        guild_id: int,
        requester_id: int,
        *,
        limit: int,
        before_id: int | None = None,
        after_id: int | None = None,
    ) -> list[Job]:
        """Return a member's requests in a server next to an id, newest first, none deleted."""
        ...


class TimingRecords(Protocol):
    """Measured runs, for estimates that survive a restart."""

    async def record_timing(self, timing: Timing) -> None:
        """Store a measured prediction (the oldest beyond a bound per key drop out)."""
        ...

    async def recent_timings(self, per_key: int) -> list[Timing]:
        """Return the newest `per_key` timings of each model and step count, oldest first."""
        ...


class GuildRecords(Protocol):
    """Each server's settings and bans."""

    async def guild_settings(self) -> list[tuple[int, str, str]]:
        """Return every stored server setting as (guild id, name, JSON value)."""
        ...

    async def put_guild_setting(
        self, guild_id: int, name: str, value_json: str, *, updated_by: int
    ) -> None:
        """Store one server setting, replacing its previous value."""
        ...

    async def delete_guild_setting(self, guild_id: int, name: str) -> None:
        """Forget one server setting, so the default applies again."""
        ...

    async def ban(self, guild_id: int, user_id: int, *, banned_by: int) -> bool:
        """Ban a member from the bot in a server; False if they already were."""
        ...

    async def unban(self, guild_id: int, user_id: int) -> bool:
        """Lift a ban; False if the member was not banned."""
        ...

    async def is_banned(self, guild_id: int, user_id: int) -> bool:
        """True if the member is banned from the bot in the server."""
        ...


class UsageRecords(Protocol):
    """What servers and members used, for quotas and /animate-usage."""

    async def requests_since(self, guild_id: int, requester_id: int, since: float) -> int:
        """Count a member's requests in a server made since `since`, except ones never sent."""
        ...

    async def gpu_seconds_since(self, guild_id: int, since: float) -> GpuSeconds:
        """Sum the GPU seconds of a server's requests made since `since`, per backend kind."""
        ...

    async def usage_by_day(self, guild_id: int, since: float) -> list[tuple[int, int, GpuSeconds]]:
        """Return (UTC day number, predictions, GPU seconds) per day since `since`."""
        ...

    async def usage_by_member(
        self, guild_id: int, since: float
    ) -> list[tuple[int, int, GpuSeconds]]:
        """Return (member id, predictions, GPU seconds) since `since`, most GPU seconds first."""
        ...


class Store(JobRecords, TimingRecords, GuildRecords, UsageRecords, Protocol):
    """Everything the bot keeps: one object, one database."""

    async def schema_version(self) -> int:
        """Return the migration level of the database."""
        ...

    async def probe_write(self) -> None:
        """Write inside a transaction and roll it back; raise if the database takes no writes."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...
