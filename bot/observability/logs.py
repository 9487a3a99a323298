"""JSON log lines for log shippers, carrying the job, server and prediction they are about.

A job's task binds its ids once (`bind_job`); every line that task logs then carries them
without each call having to pass them. Only that task's: a task it starts (a long-lived relay,
the next job's announcement) inherits the binding but may work for others, so it gets none.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FIELDS = ("job_id", "guild_id", "prediction_id")


@dataclass(frozen=True, slots=True)
class _Binding:
    """The ids a task bound, and which task it was."""

    task: asyncio.Task[Any] | None
    fields: dict[str, object]


_bound: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar(
    "animatebot_log_fields", default=None
)


def bind_job(job_id: int, guild_id: int, prediction_id: str | None = None) -> None:
    """Tag every later line of the current task with a job's ids."""
    fields: dict[str, object] = {"job_id": job_id, "guild_id": guild_id}
    if prediction_id is not None:
        fields["prediction_id"] = prediction_id
    _bound.set(_Binding(_current_task(), fields))


def bind_prediction(prediction_id: str | None) -> None:
    """Add the job's prediction id, once known, to the current task's lines."""
    binding = _bound.get()
    if binding is not None and prediction_id is not None:
        _bound.set(_Binding(binding.task, {**binding.fields, "prediction_id": prediction_id}))


def bound_fields() -> dict[str, object]:
    """The ids the current task bound (none in a task that only inherited them)."""
    binding = _bound.get()
    if binding is None or binding.task is not _current_task():
        return {}
    return dict(binding.fields)


def _current_task() -> asyncio.Task[Any] | None:
    """The running task; None outside one (a worker thread, say)."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the ids where known.

    It formats what the redacting filter left, so secrets are masked here as in text logs.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a single line of JSON."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(bound_fields())
        for name in FIELDS:  # `extra={"job_id": ...}` on the call wins over the task's
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # ASCII only: a lone surrogate (from a decoded filename or a member's odd text) stays an
        # escape instead of making the stream's UTF-8 encoder fail and print a traceback.
        return json.dumps(entry, ensure_ascii=True, default=str)
