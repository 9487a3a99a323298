"""The base of the fake servers: an aiohttp app on a free port of 127.0.0.1."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["LocalServer"]


class LocalServer(ABC):
    """Serves one aiohttp app on 127.0.0.1; start() (or `async with`) and close().

    A subclass builds its app in start() and hands it to start_app(); one with more to
    release overrides close() and ends with `await super().close()`.
    """

    shutdown_timeout: float = 1.0  # how long close() lets open requests finish

    def __init__(self) -> None:
        self.origin = ""  # http://127.0.0.1:<port>, once started
        self.port = 0
        self._runner: web.AppRunner | None = None

    @abstractmethod
    async def start(self) -> None:
        """Build the app and serve it with start_app()."""

    async def start_app(self, app: web.Application) -> None:
        """Bind a free port on 127.0.0.1, serve `app` on it and set `port` and `origin`."""
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.origin = f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        """Stop serving (again is a no-op)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        """Start serving for the duration of an `async with` block."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving at the end of an `async with` block."""
        await self.close()
