"""The Cog callbacks listener against hostile and broken peers, on a fake Cog server.

The fake (tests/fakes/cog_server.py) takes each create and keeps it, so the test can then act
as the server: POST the prediction's webhook, PUT its outputs, or as a stranger on the LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bot.backends.cog.callbacks import FILES_PER_PREDICTION, CogCallbacks
from bot.backends.cog.ids import derive_secret, server_of
from bot.backends.cog.outputs import data_answer_limit
from bot.backends.cog.pool import CogPool
from bot.backends.cog.tracking import EndedPredictions
from tests.cog_pools import callback_url
from tests.fakes.cog_server import FakeCogServer

MAX_BYTES = 1024 * 1024
MIB = 1024 * 1024


@dataclass
class Listener:
    """A pool on fake servers, its callbacks, and where they listen."""

    pool: CogPool
    url: str
    port: int
    fakes: list[FakeCogServer]

    async def place(self) -> dict[str, object]:
        """Place one prediction; the create its server received."""
        await self.pool.create({"prompt": "x", "steps": 25, "seed": 1})
        return next(fake for fake in self.fakes if fake.creates).creates[-1]


@contextlib.asynccontextmanager
async def listening(
    http: aiohttp.ClientSession, work: Path, servers: int = 1
) -> AsyncIterator[Listener]:
    """Fake servers, a started pool on them, and its callbacks on a port of their own."""
    async with contextlib.AsyncExitStack() as stack:
        fakes = [await stack.enter_async_context(FakeCogServer()) for _ in range(servers)]
        url = callback_url()
        pool = CogPool(
            http,
            [(f"gpu-{chr(ord('a') + n)}", fake.origin) for n, fake in enumerate(fakes)],
            secret=derive_secret("test bot token"),
            callback_url=url,
            uploads_dir=work / "uploads",
            health_interval=60,
            request_timeout=5,
            max_bytes=MAX_BYTES,
        )
        callbacks = CogCallbacks(pool, callback_url=url, max_bytes=MAX_BYTES)
        port = int(url.split(":")[2].split("/")[0])
        await callbacks.start("127.0.0.1", port)
        stack.push_async_callback(callbacks.stop)
        await pool.start()
        stack.push_async_callback(pool.stop)
        yield Listener(pool, url, port, fakes)


async def first_line_before_the_body(port: int, head: str, sent: bytes = b"{") -> str:
    """Send a request's head and a little of a long body; the status line answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + sent)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=5)
        return line.decode().strip()
    finally:
        writer.close()


def request_head(method: str, path: str, length: int, *extra: str) -> str:
    """An HTTP/1.1 request head that announces a body of `length` bytes."""
    lines = [f"{method} {path} HTTP/1.1", "Host: bot", f"Content-Length: {length}", *extra]
    return "\r\n".join(lines) + "\r\n"


async def chunked(total: int) -> AsyncIterator[bytes]:
    """A body of `total` bytes sent without a Content-Length."""
    for _ in range(total // MIB):
        yield b" " * MIB


async def test_a_strangers_webhook_is_refused_before_its_body_is_read(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with listening(http, tmp_path) as listener:
        # 100 MiB announced, 1 byte sent: the answer comes without waiting for the rest.
        head = request_head("POST", f"/cog/webhook/{'0' * 32}", 100 * MIB)
        assert await first_line_before_the_body(listener.port, head) == "HTTP/1.1 404 Not Found"


async def test_a_webhook_over_the_cap_is_refused(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with listening(http, tmp_path) as listener:
        create = await listener.place()
        webhook = str(create["webhook"])
        path = webhook.removeprefix(f"http://127.0.0.1:{listener.port}")
        too_long = data_answer_limit(MAX_BYTES) + 1
        head = request_head("POST", path, too_long)
        assert await first_line_before_the_body(listener.port, head) == (
            "HTTP/1.1 413 Request Entity Too Large"
        )
        # Without a Content-Length it is cut off as it arrives.
        async with http.post(webhook, data=chunked(too_long + MIB)) as refused:
            assert refused.status == 413
        # The prediction's own webhook is still taken.
        state = {"id": create["id"], "status": "processing", "logs": "Using seed: 1\n"}
        async with http.post(webhook, json=state) as taken:
            assert taken.status == 200
        [running] = [s for s in listener.pool.servers if s.running]
        assert (await listener.pool.get(next(iter(running.running)))).status == "processing"


Upload = Callable[..., Awaitable[int]]


async def finish(http: aiohttp.ClientSession, create: dict[str, object]) -> None:
    """Send the prediction's `completed` webhook, as its server would at its end."""
    state = {"id": create["id"], "status": "canceled", "logs": ""}
    async with http.post(str(create["webhook"]), json=state) as taken:
        assert taken.status == 200


def uploader(http: aiohttp.ClientSession, listener: Listener, server_id: str) -> Upload:
    """PUT a file for the prediction as its server would; the status answered."""

    async def upload(name: str = "out.mp4", data: object = b"mp4") -> int:
        headers = {"X-Prediction-Id": server_id}
        async with http.put(f"{listener.url}/uploads/{name}", data=data, headers=headers) as r:
            return r.status

    return upload


def stored(work: Path) -> list[str]:
    """Every file in the uploads folder (partial ones too), by name."""
    return sorted(p.name for p in (work / "uploads").rglob("*") if p.is_file())


async def test_uploads_are_held_to_the_cap_and_to_a_few_files_of_a_running_prediction(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with listening(http, tmp_path) as listener:
        create = await listener.place()
        upload = uploader(http, listener, str(create["id"]))
        head = request_head(
            "PUT", "/cog/uploads/big.mp4", MAX_BYTES + 1, f"X-Prediction-Id: {create['id']}"
        )
        assert await first_line_before_the_body(listener.port, head) == (
            "HTTP/1.1 413 Request Entity Too Large"
        )
        assert await upload("big.mp4", chunked(2 * MIB)) == 413
        assert stored(tmp_path) == [], "a refused upload left a file behind"
        statuses = [await upload(f"out-{n}.mp4") for n in range(FILES_PER_PREDICTION + 1)]
        assert statuses == [201] * FILES_PER_PREDICTION + [429]
        assert len(stored(tmp_path)) == FILES_PER_PREDICTION
        await finish(http, create)
        assert await upload("late.mp4") == 404, "an upload after its prediction ended was taken"


async def test_an_upload_that_breaks_off_leaves_no_file(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with listening(http, tmp_path) as listener:
        create = await listener.place()
        head = request_head(
            "PUT", "/cog/uploads/out.mp4", MAX_BYTES, f"X-Prediction-Id: {create['id']}"
        )
        _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(head.encode() + b"\r\n" + b"x" * (MAX_BYTES // 2))
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + 5
        while not stored(tmp_path):  # the partial file appears as the body arrives
            assert asyncio.get_running_loop().time() < deadline, "the upload never began"
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        while stored(tmp_path) or any((tmp_path / "uploads").iterdir()):
            assert asyncio.get_running_loop().time() < deadline, stored(tmp_path)
            await asyncio.sleep(0.01)


async def test_a_forgotten_prediction_takes_its_upload_folder_with_it(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ended = EndedPredictions(keep=1)
    tokens: list[str] = []
    async with listening(http, tmp_path) as listener:
        for _ in range(2):
            create = await listener.place()
            assert await uploader(http, listener, str(create["id"]))() == 201
            [server] = [s for s in listener.pool.servers if s.running]
            tracked = listener.pool.upload_target(str(create["id"]))
            assert tracked is not None and tracked.state.id in server.running
            tokens.append(tracked.token)
            await finish(http, create)
            ended.add(tracked)  # the second forgets the first, as the pool's own record does
            listener.fakes[0].creates.clear()  # READY again for the next one
    folders = list((tmp_path / "uploads").iterdir())
    assert [folder.name for folder in folders] == tokens[1:], "the first one's folder stayed"
    assert stored(tmp_path) == ["out.mp4"]


@pytest.mark.parametrize("status", [404, 405, 307, 401])
async def test_a_server_that_answers_a_create_as_no_cog_server_would_is_refused(
    http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    async with listening(http, tmp_path, servers=2) as listener:
        listener.fakes[0].create_status = status
        placed = await listener.pool.create({"prompt": "x", "steps": 25, "seed": 1})
        wrong, right = listener.pool.servers
    assert server_of(placed.id) == "gpu-b", "the job failed or stayed on the wrong server"
    assert wrong.refused is not None and f"answered {status}" in wrong.refused
    assert right.refused is None and listener.fakes[1].creates
    assert any(
        "Cog server gpu-a" in r.message and "is refused" in r.message for r in caplog.records
    )


async def test_an_oversized_health_answer_is_refused_with_a_log_line(
    http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeCogServer() as fake:
        fake.health_padding = 2 * MIB
        pool = CogPool(
            http,
            [("gpu-a", fake.origin)],
            secret=derive_secret("t"),
            callback_url=None,
            uploads_dir=tmp_path,
            health_interval=60,
        )
        await pool.start()
        await pool.stop()
    assert not pool.servers[0].usable
    assert any("its answer to GET /health-check is over" in r.message for r in caplog.records)
