"""The last steps of a job: download the output, make it fit Discord, and post it once."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bot import media
from bot.backends.base import DownloadError, Prediction, PredictionAPIError
from bot.core.context import JobContext
from bot.core.crashpoints import crash_point
from bot.core.eta import instant
from bot.core.following import PredictionFollower
from bot.core.jobs import Job
from bot.core.outcomes import FailureCause, api_refusal
from bot.core.reporter import DeliveryFailed, JobResult

log = logging.getLogger(__name__)


class OutputExpired(Exception):
    """The prediction's output was removed upstream before it was posted."""


class ResultDelivery:
    """Fetches, converts and posts results; knows which posts are in flight at shutdown."""

    def __init__(
        self,
        ctx: JobContext,
        *,
        follower: PredictionFollower,
        stopping: Callable[[], bool],
        work_root: Path | None = None,
    ) -> None:
        self._backend = ctx.backend
        self._store = ctx.store
        self._follower = follower
        self._status = ctx.status
        self._outcomes = ctx.outcomes
        self._reporter = ctx.reporter
        self._max_download_bytes = ctx.limits.max_download_bytes
        self._stopping = stopping
        self._wall = ctx.wall_clock
        self._metrics = ctx.metrics
        # Downloads and conversions, one folder per delivery inside it, swept at each start;
        # None: a temporary folder of its own.
        self.work_root = work_root
        # FFmpeg uses every core: one conversion at a time keeps the bot responsive.
        self.converting = asyncio.Semaphore(1)
        self.posting: set[int] = set()  # jobs whose post is in flight

    def clear_work_root(self) -> None:
        """Start with an empty folder for downloads: whatever is there, a crash left behind."""
        if self.work_root is None:
            self.work_root = Path(tempfile.mkdtemp(prefix="animate-bot-"))
            return
        shutil.rmtree(self.work_root, ignore_errors=True)
        self.work_root.mkdir(parents=True, exist_ok=True)

    async def deliver(self, job: Job, prediction: Prediction | None, *, resumed: bool) -> None:
        """Download the output, make it fit, and post it, exactly once."""
        assert job.prediction_id is not None
        reporter = self._reporter()
        if resumed:
            # The last run may have died between posting and recording the post.
            existing = await reporter.find_delivered(job)
            if existing is not None:
                log.info("job %s was already posted as message %s", job.id, existing)
                done = await self._store.mark_done(job.id, result_message_id=existing)
                self._metrics.job_finished("done")
                await self._outcomes.report(done, lambda reporter: reporter.report_done(done))
                return
        self._status.show_uploading(job.id)
        workdir = Path(tempfile.mkdtemp(prefix=f"job{job.id}-", dir=self.work_root))
        try:
            result = await self._prepare(job, prediction, workdir)
            if result is None:
                return  # failed, and the requester was told why
            await self._status.settle(job.id)
            if self._stopping():
                return  # stays `delivering`; the next start posts it
            await self._store.confirm_lease(job.id)  # a post cannot be taken back: still ours?
            self.posting.add(job.id)
            try:
                message_id = await reporter.deliver(job, result)
                crash_point("posted")
                await self._store.mark_done(job.id, result_message_id=message_id)
                self._metrics.job_finished("done")
                self._record_lag(prediction)
            except DeliveryFailed as exc:
                await self._outcomes.fail(job.id, str(exc), cause=FailureCause.DELIVERY)
                return
            finally:
                self.posting.discard(job.id)
        finally:
            # Blocking, but small and local; it must run even when the task is cancelled.
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("job %s delivered as message %s", job.id, message_id)

    async def _prepare(
        self, job: Job, prediction: Prediction | None, workdir: Path
    ) -> JobResult | None:
        """Fetch the output into `workdir` and convert it to fit; None once the job failed."""
        assert job.prediction_id is not None
        try:
            if prediction is None or not prediction.output_urls:
                prediction = await self._follower.fetch(job)
                if prediction is None:
                    return None
            if prediction.data_removed:
                # Outputs live an hour upstream; the bot was away longer than that.
                raise OutputExpired
            urls = prediction.output_urls
            if not urls:
                await self._outcomes.fail(
                    job.id, "The animation service returned no file.", cause=FailureCause.MEDIA
                )
                return None
            downloaded = workdir / "output"
            size = await self._backend.download_to(
                urls[0], downloaded, max_bytes=self._max_download_bytes
            )
            crash_point("downloaded")
            guild_limit = None
            if job.upload_limit is None:
                guild_limit = await self._reporter().guild_upload_limit(job)
            limit = media.upload_limit(job.upload_limit, guild_limit)
            upload = await media.prepare_upload(
                downloaded,
                fmt=job.request.output_format,  # pyright: ignore[reportArgumentType]
                limit_bytes=limit,
                workdir=workdir,
                seed=job.seed,
                prompt=job.request.prompt,
                conversions=self.converting,
                observe=self._metrics.conversion,
            )
        except DownloadError as exc:
            await self._outcomes.fail(
                job.id,
                f"The animation could not be downloaded: {exc}",
                cause=FailureCause.DOWNLOAD,
            )
            return None
        except media.MediaError as exc:
            await self._outcomes.fail(job.id, str(exc), cause=FailureCause.MEDIA)
            return None
        except PredictionAPIError as exc:
            await self._outcomes.fail(job.id, api_refusal(exc), cause=FailureCause.API_REFUSED)
            return None
        return JobResult(
            file=upload,
            output_size=size,
            upload_limit=limit,
            prediction_id=job.prediction_id,
            model_version=prediction.version or job.model_version,
            predict_time=prediction.predict_time or job.predict_time,
            elapsed=max(0.0, self._wall() - job.created_at),
        )

    def _record_lag(self, prediction: Prediction | None) -> None:
        """Measure from the prediction's end, by the backend's clock, to the result posted."""
        ended = instant(prediction.completed_at) if prediction is not None else None
        if ended is not None:
            self._metrics.delivered(self._wall() - ended)
