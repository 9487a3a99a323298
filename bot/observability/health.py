"""Whether the bot is well (`/healthz`) and whether it has finished starting (`/readyz`).

Each check answers with a short reason; the answer is cached for a second, so a scraper
or a container runtime polling often costs the database and the API nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

PROBE_TIMEOUT = 5.0  # a check that takes longer counts as failed
CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's answer: well or not, and a few words on why."""

    ok: bool
    detail: str


Check = Callable[[], Awaitable[CheckResult]]


def gateway_result(expected: Iterable[int] | None, connected: Iterable[int]) -> CheckResult:
    """Well if every shard this process runs (`expected`; None: not known yet) is connected."""
    if expected is None:
        return CheckResult(False, "the shards have not started yet")
    wanted = sorted(set(expected))
    up = set(connected)
    down = [shard for shard in wanted if shard not in up]
    if not wanted:
        return CheckResult(False, "no shard to run")
    if down:
        return CheckResult(False, f"shard {', '.join(map(str, down))} not connected")
    return CheckResult(True, f"{len(wanted)} shard(s) connected")


class HealthReport:
    """Runs named checks concurrently, each under a time limit, caching the answer briefly."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        *,
        cache_seconds: float = CACHE_SECONDS,
        timeout: float = PROBE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        mask: Callable[[str], str] = str,
    ) -> None:
        self._checks = dict(checks)
        # The body is served unauthenticated: an error's text may carry a token or a URL's
        # credentials, which the caller's `mask` hides (this layer knows no secrets).
        self._mask = mask
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._clock = clock
        self._cached: tuple[float, dict[str, CheckResult]] | None = None
        self._lock = asyncio.Lock()

    def add(self, name: str, check: Check) -> None:
        """Add a check (a backend's reachability, say)."""
        self._checks[name] = check
        self._cached = None

    async def results(self) -> dict[str, CheckResult]:
        """Every check's answer, from the cache if it is fresh."""
        async with self._lock:  # concurrent scrapes share one round of checks
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self._cache_seconds:
                return self._cached[1]
            names = list(self._checks)
            answers = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
            results = dict(zip(names, answers, strict=True))
            self._cached = (self._clock(), results)
            return results

    async def _run(self, check: Check) -> CheckResult:
        """Run one check; a time-out or an error is an unhealthy answer, not a crash."""
        try:
            return await asyncio.wait_for(check(), self._timeout)
        except TimeoutError:
            return CheckResult(False, f"no answer within {self._timeout:g} s")
        except Exception as exc:  # the report must say what broke, whatever it was
            return CheckResult(False, self._mask(f"{type(exc).__name__}: {exc}")[:200])


def summary(results: Mapping[str, CheckResult]) -> tuple[bool, dict[str, object]]:
    """Whether all checks passed, and the JSON body saying which did not and why."""
    ok = all(result.ok for result in results.values())
    failing = {name: result.detail for name, result in results.items() if not result.ok}
    body: dict[str, object] = {
        "status": "ok" if ok else "unhealthy",
        "checks": {name: result.detail for name, result in results.items()},
    }
    if failing:
        body["reason"] = "; ".join(f"{name}: {detail}" for name, detail in failing.items())
    return ok, body
