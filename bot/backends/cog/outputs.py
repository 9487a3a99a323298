"""Outputs of Cog servers: `data:` URIs decoded to a file, and files they uploaded to us.

Both are held to the download cap: a `data:` URI is refused before it is decoded if its
length says it is too big, and an upload is cut off as it arrives (callbacks.py).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import shutil
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from bot.backends.base import DownloadError

_CHUNK = 4 * 1024 * 1024  # base64 characters decoded at a time (a multiple of 4)


def data_answer_limit(max_bytes: int) -> int:
    """The most a body holding a prediction with a `data:` output may be, in bytes."""
    # A data: URI is 4/3 of the file, plus the logs and the rest of the prediction.
    return max_bytes * 4 // 3 + 4 * 1024 * 1024


def too_large() -> DownloadError:
    """The refusal of an output over the download cap."""
    return DownloadError("The output file is larger than the download limit.")


def write_data_uri(uri: str, dest: Path, max_bytes: int) -> int:
    """Decode a `data:` URI into `dest` within the cap; return the size written."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise DownloadError("The output is a malformed data URI.")
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise too_large()
    if not header.endswith(";base64"):
        data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > max_bytes:
            raise too_large()
        dest.write_bytes(data)
        return len(data)
    written = 0
    with dest.open("wb") as file:
        for start in range(0, len(payload), _CHUNK):
            try:
                chunk = base64.b64decode(payload[start : start + _CHUNK], validate=True)
            except (binascii.Error, ValueError):
                raise DownloadError("The output is a malformed data URI.") from None
            written += len(chunk)
            if written > max_bytes:
                raise too_large()
            file.write(chunk)
    return written


def copy_upload(source: Path, dest: Path, max_bytes: int) -> int:
    """Copy a file a server uploaded into `dest` within the cap; return its size."""
    try:
        size = source.stat().st_size
    except FileNotFoundError:
        raise DownloadError("The uploaded output is gone.") from None
    if size > max_bytes:
        raise too_large()
    shutil.copyfile(source, dest)
    return size


def discard_uploads(paths: Iterable[Path]) -> None:
    """Delete a forgotten prediction's uploaded files and the folders that held them."""
    folders: set[Path] = set()
    for path in paths:
        path.unlink(missing_ok=True)
        folders.add(path.parent)
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # not empty: an upload of it is still arriving
