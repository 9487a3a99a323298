"""The seams, each request counted against its budget before it goes.

`BudgetedBackend` wraps the Backend: every request that ends a job (or creates one) waits for
room only if the API budget is spent, and a progress poll is skipped when there is none.
Requests a backend sends to the bot's own GPUs (`PartlyFree`) are not counted: the budget is
the prediction API's. `MeteredReporter` wraps the JobReporter: results and final messages are
counted, never delayed (status edits were counted by the relay, which sheds them when
Discord's budget is short).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from bot.backends.base import Backend, BackendFeatures, PartlyFree, Prediction
from bot.core.budgets import ApiBudget, ApiUse, DiscordBudget
from bot.core.jobs import Job
from bot.core.reporter import JobReporter, JobResult, JobStatusUpdate


class BudgetedBackend:
    """A Backend whose requests are counted against the API budget."""

    def __init__(self, backend: Backend, budget: ApiBudget) -> None:
        self.inner = backend
        self.budget = budget

    @property
    def features(self) -> BackendFeatures:
        """What the wrapped backend can do."""
        return self.inner.features

    def has_capacity(self, starting: int) -> bool:
        """Whether the wrapped backend could start one more prediction now."""
        return self.inner.has_capacity(starting)

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
        """Start a prediction within the create budget."""
        await self._spend(ApiUse.CREATE, None)
        return await self.inner.create(api_input, wait=wait)

    async def get(self, prediction_id: str) -> Prediction:
        """Read a prediction for its end (an aimed poll): it always goes."""
        await self._spend(ApiUse.ENDING, prediction_id)
        return await self.inner.get(prediction_id)

    async def get_progress(
        self, prediction_id: str, running: int, *, timeout: float
    ) -> Prediction | None:
        """Read a prediction for its progress only; None if the budget has no room for it.

        `running`: how many jobs are being followed (each may end, and spend, soon). One
        attempt within `timeout` (the time left before the aimed poll): it must not delay it.
        """
        if not self._free(prediction_id) and not await self.budget.try_progress(running):
            return None
        return await self.inner.get_once(prediction_id, timeout=timeout)

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
    ) -> Prediction | None:
        """Search for a prediction a crash left (counted as one request per search)."""
        await self._spend(ApiUse.ENDING, "")
        return await self.inner.find(api_input, created_after=created_after, accept=accept)

    async def cancel(self, prediction_id: str) -> Prediction:
        """Ask for a prediction to stop: it always goes."""
        await self._spend(ApiUse.ENDING, prediction_id)
        return await self.inner.cancel(prediction_id)

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        """Fetch an output: it always goes."""
        await self._spend(ApiUse.ENDING, url)
        return await self.inner.download_to(url, dest, max_bytes=max_bytes)

    async def _spend(self, use: ApiUse, reference: str | None) -> None:
        """Count a request against the budget, unless it goes to the bot's own GPUs."""
        if not self._free(reference):
            await self.budget.spend(use)

    def _free(self, reference: str | None) -> bool:
        """True if the request about `reference` (None: a create) costs no API budget."""
        return isinstance(self.inner, PartlyFree) and self.inner.unmetered(reference)


class MeteredReporter:
    """A JobReporter whose messages are counted against Discord's budget, never delayed."""

    def __init__(self, reporter: JobReporter, budget: DiscordBudget) -> None:
        self.inner = reporter
        self._budget = budget

    async def show_status(self, job: Job, update: JobStatusUpdate) -> None:
        """Edit a status message (the relay already counted it)."""
        await self.inner.show_status(job, update)

    async def deliver(self, job: Job, result: JobResult) -> int:
        """Post a result at once."""
        await self._budget.note()
        return await self.inner.deliver(job, result)

    async def guild_upload_limit(self, job: Job) -> int | None:
        """Read the server's upload limit (from the client's cache: no request)."""
        return await self.inner.guild_upload_limit(job)

    async def announce(self, job: Job, update: JobStatusUpdate) -> int | None:
        """Post a job's missing status message at once."""
        await self._budget.note()
        return await self.inner.announce(job, update)

    async def find_delivered(self, job: Job) -> int | None:
        """Look for a result posted before a crash."""
        await self._budget.note()
        return await self.inner.find_delivered(job)

    async def report_done(self, job: Job) -> None:
        """Show that the result was posted."""
        await self._budget.note()
        await self.inner.report_done(job)

    async def report_failure(self, job: Job, reason: str) -> None:
        """Tell the requester the job failed."""
        await self._budget.note()
        await self.inner.report_failure(job, reason)

    async def report_canceled(self, job: Job) -> None:
        """Show that the job was canceled."""
        await self._budget.note()
        await self.inner.report_canceled(job)
