"""Outputs of Cog servers within the download cap, and nothing from anywhere else."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import pytest

from bot.backends.base import DownloadError
from bot.backends.cog.ids import derive_secret
from bot.backends.cog.outputs import write_data_uri
from bot.backends.cog.pool import CogPool
from tests.cog_servers import SAMPLE


def test_a_data_uri_is_decoded_within_the_cap(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    uri = "data:video/mp4;base64," + base64.b64encode(data).decode()
    dest = tmp_path / "out.mp4"
    assert write_data_uri(uri, dest, len(data)) == len(data)
    assert dest.read_bytes() == data
    with pytest.raises(DownloadError, match="larger than the download limit"):
        write_data_uri(uri, tmp_path / "big.mp4", len(data) - 1000)
    with pytest.raises(DownloadError, match="malformed"):
        write_data_uri("data:video/mp4;base64,@@@@", tmp_path / "bad.mp4", 100)


async def test_the_pool_fetches_nothing_a_server_merely_names(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pool = CogPool(
        http,
        [("gpu-a", "http://127.0.0.1:9")],
        secret=derive_secret("t"),
        callback_url="http://127.0.0.1:9/cog",
        uploads_dir=tmp_path,
    )
    # A hostile or misconfigured server's output URL: never fetched (it could point anywhere).
    for url in ("http://169.254.169.254/latest", "http://127.0.0.1:9/cog/uploads/x/out.mp4"):
        assert not pool.received(url)
        with pytest.raises(DownloadError, match="did not receive"):
            await pool.download_to(url, tmp_path / "out.mp4", max_bytes=1000)
    assert not (tmp_path / "out.mp4").exists()
