"""A job's row as every store reads it: the columns, in order, and the Job built from them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.core.jobs import GenerationRequest, Job, JobStatus

JOB_COLUMNS = (
    "id, guild_id, channel_id, requester_id, request_message_id, input_json, status, "
    "prediction_id, result_message_id, error, parent_job_id, predict_time, deleted, "
    "created_at, updated_at, submitted_at, started_at, completed_at, reruns, output_format, "
    "upload_limit, model_version, interaction_token"
)
# The largest id either database can store (SQLite's rowid, PostgreSQL's bigint).
MAX_JOB_ID = 2**63 - 1
UNFINISHED = tuple(s.value for s in JobStatus if not s.is_final)

# Usage, the same SQL in both stores. GPU seconds of a job: its last run, plus runs made again
# after their output expired (all counted on the backend of the last prediction).
GPU_SECONDS = "(COALESCE(predict_time, 0) + earlier_predict_time)"
BILLED = "(predict_time IS NOT NULL OR earlier_predict_time > 0)"
# Predictions on the bot's own Cog servers are stored as `cog:<server>:<id>` (the constant
# `bot.backends.cog.ids.PREFIX`, which a test compares); any other id ran on Replicate.
COG_PREFIX = "cog:"
ON_OWN_GPU = f"(substr(COALESCE(prediction_id, ''), 1, {len(COG_PREFIX)}) = '{COG_PREFIX}')"
# Two columns: (Replicate seconds, own GPUs' seconds), summed over the selected jobs.
SPLIT_GPU_SECONDS = (
    f"COALESCE(SUM(CASE WHEN {ON_OWN_GPU} THEN 0 ELSE {GPU_SECONDS} END), 0), "
    f"COALESCE(SUM(CASE WHEN {ON_OWN_GPU} THEN {GPU_SECONDS} ELSE 0 END), 0)"
)


def job_from_row(row: Iterable[Any]) -> Job:
    """Build a Job from a row in `JOB_COLUMNS` order."""
    (
        job_id,
        guild_id,
        channel_id,
        requester_id,
        request_message_id,
        input_json,
        status,
        prediction_id,
        result_message_id,
        error,
        parent_job_id,
        predict_time,
        deleted,
        created_at,
        updated_at,
        submitted_at,
        started_at,
        completed_at,
        reruns,
        output_format,
        upload_limit,
        model_version,
        interaction_token,
    ) = row
    return Job(
        id=job_id,
        guild_id=guild_id,
        channel_id=channel_id,
        requester_id=requester_id,
        request=GenerationRequest.from_json(input_json, output_format=output_format),
        status=JobStatus(status),
        created_at=created_at,
        updated_at=updated_at,
        request_message_id=request_message_id,
        prediction_id=prediction_id,
        result_message_id=result_message_id,
        error=error,
        parent_job_id=parent_job_id,
        submitted_at=submitted_at,
        started_at=started_at,
        completed_at=completed_at,
        predict_time=predict_time,
        deleted=bool(deleted),
        reruns=reruns,
        upload_limit=upload_limit,
        model_version=model_version,
        interaction_token=interaction_token,
    )
