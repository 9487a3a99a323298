"""Ended predictions' `data:` outputs moved out of memory, into files beside the uploads.

A Cog server returns its output as a `data:` URI in the `completed` webhook: a few MiB each,
kept for as long as the ended prediction is remembered. Once it ended, the URI is decoded in
a thread into a file of that prediction's uploads folder, and the record names the file
instead; downloads copy it like an uploaded output. Records and their files go after
ENDED_KEPT predictions or ENDED_TTL_SECONDS, whichever comes first (tracking.py).
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from dataclasses import replace
from pathlib import Path

from bot.backends.base import DownloadError
from bot.backends.cog.outputs import write_data_uri
from bot.backends.cog.tracking import Tracked

log = logging.getLogger(__name__)


class Spiller:
    """Writes ended predictions' `data:` outputs to files, one task each."""

    def __init__(self, uploads_dir: Path, *, max_bytes: int) -> None:
        self._uploads_dir = uploads_dir
        self._max_bytes = max_bytes
        self._tasks: set[asyncio.Task[None]] = set()

    def spill(self, tracked: Tracked) -> None:
        """Move an ended prediction's `data:` outputs to files, soon."""
        if not any(url.startswith("data:") for url in tracked.state.output_urls):
            return
        task = asyncio.create_task(self._spill(tracked), name=f"cog-spill-{tracked.token[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Drop the spills still being written."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _spill(self, tracked: Tracked) -> None:
        """Decode each `data:` output to a file and name the file in the record."""
        output = tracked.state.output
        items = output if isinstance(output, list) else [output]
        folder = self._uploads_dir / tracked.token
        spilled: list[object] = []
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item.startswith("data:"):
                spilled.append(item)
                continue
            mime = item[5:].partition(",")[0].partition(";")[0]
            path = folder / f"output-{index}{mimetypes.guess_extension(mime) or ''}"
            try:
                await asyncio.to_thread(self._write, item, path)
            except (DownloadError, OSError) as exc:
                log.info("prediction %s: output kept in memory (%s)", tracked.state.id, exc)
                return  # the download will say what is wrong with it
            url = path.as_uri()
            tracked.files[url] = path
            spilled.append(url)
        tracked.state = replace(
            tracked.state, output=spilled if isinstance(output, list) else spilled[0]
        )

    def _write(self, uri: str, path: Path) -> None:
        """Decode one `data:` URI into a file (in a thread)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_data_uri(uri, path, self._max_bytes)
