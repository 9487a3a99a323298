"""The throughput worker's count of its API requests, by prediction and by what each was for."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import aiohttp

from bench.figures import API_USE
from bench.rig import ScaledTime
from bot.core.budgets import ApiUse


@dataclass
class ApiMeter:
    """An HTTP trace that counts every request the bot's session sends to the API."""

    scaled: ScaledTime
    # prediction id -> kind -> count; creates under "(creates)"
    requests: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    api_times: list[float] = field(default_factory=list)  # every request but creates, scaled
    create_times: list[float] = field(default_factory=list)
    # prediction id -> when (Unix seconds, real) this process first asked about it
    first_asked: dict[str, float] = field(default_factory=dict)

    def trace(self) -> aiohttp.TraceConfig:
        """The trace config to give the session."""
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._on_request)
        return trace

    async def _on_request(
        self, _session: object, _ctx: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        """Count one request."""
        parts = params.url.path.split("/")
        if params.method == "POST" and params.url.path.endswith("/predictions"):
            self.requests["(creates)"]["create"] += 1
            self.create_times.append(self.scaled.monotonic())
            return
        self.api_times.append(self.scaled.monotonic())
        if parts[-2:-1] == ["predictions"]:
            use = "progress" if API_USE.get() is ApiUse.PROGRESS else "ending"
            self.requests[parts[-1]][f"poll_{use}"] += 1
            self.first_asked.setdefault(parts[-1], time.time())
        elif parts[-2:-1] == ["files"]:
            self.requests[parts[-1].removesuffix(".mp4")]["download"] += 1
