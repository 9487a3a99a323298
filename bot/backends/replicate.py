"""Client for Replicate's prediction HTTP API (or any gateway serving the same API)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from bot.backends.base import (
    BackendFeatures,
    CreateOutcomeUnknown,
    Prediction,
    PredictionAPIError,
    PredictionNotFound,
    RateLimited,
    SearchIncomplete,
    ServiceUnavailable,
)
from bot.backends.downloads import OutputDownloader
from bot.backends.output_hosts import DEFAULT_OUTPUT_PREFIXES, OutputPrefix
from bot.observability.metrics import BotMetrics

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def version_id(version: str) -> str:
    """Return the bare version id of `owner/name:id` or `id`."""
    return version.rsplit(":", 1)[-1]


class PredictionClient:
    """Create, follow and cancel predictions on one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        token: str,
        version: str,
        wait_seconds: int = 60,
        webhook_url: str | None = None,
        webhook_events: tuple[str, ...] = ("completed",),
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        request_timeout: float = 30.0,
        download_stall_timeout: float = 30.0,
        download_timeout: float = 600.0,
        dns_resolver: Callable[[], AbstractResolver] = DefaultResolver,
        output_prefixes: Sequence[OutputPrefix] = DEFAULT_OUTPUT_PREFIXES,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        metrics: BotMetrics | None = None,
    ) -> None:
        self._session = session
        self._metrics = metrics if metrics is not None else BotMetrics()
        self._base = base_url.rstrip("/")
        # The token goes to this origin only (scheme, host and port of the configured base).
        self._origin = yarl.URL(self._base).origin()
        self._token = token
        self.version = version
        self._wait_seconds = max(1, min(60, wait_seconds))
        self.webhook_url = webhook_url
        self._webhook_events = webhook_events
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._request_timeout = request_timeout
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._downloads = OutputDownloader(
            session,
            api_origin=self._origin,
            prefixes=output_prefixes,
            stall_timeout=download_stall_timeout,
            timeout=download_timeout,
            dns_resolver=dns_resolver,
            max_attempts=max_attempts,
            backoff=self._backoff,
            sleep=sleep,
        )

    @property
    def base_url(self) -> str:
        """The configured API base, without a trailing slash."""
        return self._base

    @property
    def features(self) -> BackendFeatures:
        """Polled by id, pushes with a webhook, and a list to search after a crash."""
        return BackendFeatures(polling=True, pushes=self.pushes_results, search=True)

    def has_capacity(self, starting: int) -> bool:
        """Always: the API queues what its GPUs cannot start yet."""
        return True

    @property
    def pushes_results(self) -> bool:
        """True if the API is asked to send each prediction's end to our webhook."""
        return self.webhook_url is not None

    async def create(
        self, api_input: Mapping[str, Any], *, wait: bool | float | None = None
    ) -> Prediction:
        """Start a prediction; with `wait`, hold the request until it ends or the window closes.

        By default it holds only without a webhook: with one, the end is pushed to us, and an
        answer at once records the prediction's id at once (nothing to search for after a crash).
        A number of seconds holds at most that long (whole seconds, within the API's 1-60).
        """
        if wait is None:
            wait = not self.pushes_results
        if wait is True:
            hold = self._wait_seconds
        else:
            hold = max(1, min(self._wait_seconds, math.ceil(wait))) if wait else 0
        headers = {"Prefer": f"wait={hold}"} if hold else {}
        timeout = hold + self._request_timeout if hold else self._request_timeout
        body: dict[str, Any] = {"version": self.version, "input": dict(api_input)}
        if self.webhook_url is not None:
            body["webhook"] = self.webhook_url
            body["webhook_events_filter"] = list(self._webhook_events)
        data = await self._request(
            "POST",
            f"{self._base}/predictions",
            body=body,
            headers=headers,
            timeout=timeout,
            idempotent=False,
        )
        return Prediction.from_json(data)

    async def webhook_secret(self) -> str:
        """Fetch the account's webhook signing secret (`whsec_...`)."""
        data = await self._request("GET", f"{self._base}/webhooks/default/secret")
        key = data.get("key") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            raise PredictionAPIError("The prediction API returned no webhook signing secret.")
        return key

    async def get(self, prediction_id: str) -> Prediction:
        """Fetch a prediction by id, from the configured base (never from `urls.get`)."""
        data = await self._request("GET", self._prediction_url(prediction_id))
        return Prediction.from_json(data)

    async def get_once(self, prediction_id: str, *, timeout: float) -> Prediction:
        """Fetch a prediction in one attempt within `timeout` seconds; raise on any failure."""
        bound = max(0.1, min(timeout, self._request_timeout))
        url = self._prediction_url(prediction_id)
        return Prediction.from_json(await self._request("GET", url, timeout=bound, attempts=1))

    async def cancel(self, prediction_id: str) -> Prediction:
        """Ask the API to cancel a prediction; cancelling twice is harmless."""
        data = await self._request("POST", self._prediction_url(prediction_id) + "/cancel")
        return Prediction.from_json(data)

    async def find(
        self,
        api_input: Mapping[str, Any],
        *,
        created_after: float,
        accept: Callable[[Prediction], Awaitable[bool]] | None = None,
        max_pages: int = 20,
    ) -> Prediction | None:
        """Find a prediction of this version with exactly this input, created after a time.

        None means the whole list since then was read and holds no match; a list too long to
        read raises SearchIncomplete, since "not found" would then be a guess.
        """
        wanted_version = version_id(self.version)
        wanted_input = _normalise(api_input)
        after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created_after - 120))
        url = f"{self._base}/predictions?" + urllib.parse.urlencode({"created_after": after})
        for _ in range(max_pages):
            page = await self._request("GET", url)
            if not isinstance(page, dict):
                return None
            for item in page.get("results") or []:
                if not isinstance(item, dict):
                    continue
                same_version = version_id(str(item.get("version") or "")) == wanted_version
                if same_version and _normalise(item.get("input") or {}) == wanted_input:
                    found = Prediction.from_json(item)
                    if accept is None or await accept(found):
                        return found
            next_url = page.get("next")
            if not isinstance(next_url, str) or not next_url:
                return None
            # Keep the token on the configured host: take only the cursor from `next`.
            query = yarl.URL(next_url).query
            url = f"{self._base}/predictions?" + urllib.parse.urlencode(dict(query))
        raise SearchIncomplete(f"More than {max_pages} pages of predictions to search.")

    async def download(self, url: str, *, max_bytes: int) -> bytes:
        """Fetch an output file or decode a data URI, refusing anything over `max_bytes`."""
        return await self._downloads.download(url, max_bytes=max_bytes)

    async def download_to(self, url: str, dest: Path, *, max_bytes: int) -> int:
        """Stream an output file (or data URI) into `dest` and return its size."""
        return await self._downloads.download_to(url, dest, max_bytes=max_bytes)

    def _prediction_url(self, prediction_id: str) -> str:
        """Build a prediction's URL from the configured base."""
        return f"{self._base}/predictions/{urllib.parse.quote(prediction_id, safe='')}"

    async def _request(
        self,
        method: str,
        url: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        idempotent: bool = True,
        attempts: int | None = None,
    ) -> Any:
        """Send one API call with retries that never risk a second paid prediction."""
        if yarl.URL(url).origin() != self._origin:
            # Every URL is built from the base; this guards the token against a future slip.
            raise PredictionAPIError("Refusing to send the API token to another host.")
        all_headers = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        client_timeout = aiohttp.ClientTimeout(total=timeout or self._request_timeout)
        last_error: PredictionAPIError | None = None
        tries = attempts or self._max_attempts
        for attempt in range(tries):
            try:
                async with self._session.request(
                    method,
                    url,
                    json=body,
                    headers=all_headers,
                    timeout=client_timeout,
                    allow_redirects=False,
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except aiohttp.ClientConnectorError:
                self._count(method, url, None)
                # Nothing was sent, so even a create is safe to repeat.
                last_error = ServiceUnavailable("The prediction API could not be reached.")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._count(method, url, None)
                if not idempotent:
                    raise CreateOutcomeUnknown(
                        "The prediction API did not answer the create request "
                        f"({type(exc).__name__}); it may have been accepted."
                    ) from None
                last_error = ServiceUnavailable(
                    f"The prediction API did not answer ({type(exc).__name__})."
                )
            else:
                self._count(method, url, status)
                if 200 <= status < 300:
                    try:
                        return json.loads(raw)
                    except ValueError:
                        if not idempotent:
                            raise CreateOutcomeUnknown(
                                "The prediction API answered the create with something that "
                                "is not JSON."
                            ) from None
                        last_error = ServiceUnavailable(
                            "The prediction API answered with something that is not JSON."
                        )
                elif 300 <= status < 400:
                    # A redirect could carry the token elsewhere: it is never followed.
                    raise PredictionAPIError(
                        f"The prediction API answered with a redirect ({status}), which the "
                        "bot does not follow; check REPLICATE_API_BASE.",
                        status=status,
                    )
                else:
                    error = _error_from(status, raw)
                    if status == 429:
                        last_error = error
                        if retry_after is not None and retry_after > self._backoff_cap:
                            # A long wait belongs to the caller, where Cancel can cut it short.
                            error.retry_after = retry_after
                            raise error
                        if attempt + 1 < tries:
                            delay = (
                                retry_after if retry_after is not None else self._backoff(attempt)
                            )
                            log.warning(
                                "prediction API throttled %s; retrying in %.1fs", method, delay
                            )
                            await self._sleep(delay)
                        continue
                    if status >= 500 and idempotent:
                        last_error = error
                    elif status >= 500:
                        raise CreateOutcomeUnknown(
                            f"The prediction API failed the create request ({status}); "
                            "it may have been accepted."
                        )
                    else:
                        raise error
            if attempt + 1 < tries:
                await self._sleep(self._backoff(attempt))
        assert last_error is not None
        raise last_error

    def _count(self, method: str, url: str, status: int | None) -> None:
        """Count one request by kind and answer (None: none came)."""
        path = yarl.URL(url).path.removeprefix(yarl.URL(self._base).path)
        if path == "/predictions":
            kind = "create" if method == "POST" else "list"
        elif path.startswith("/predictions/"):
            kind = "cancel" if path.endswith("/cancel") else "get"
        else:
            kind = "webhook_secret" if path.startswith("/webhooks/") else "other"
        self._metrics.api_request(kind, status)

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff."""
        ceiling = min(self._backoff_cap, self._backoff_base * (2**attempt))
        return self._rng.uniform(ceiling / 2, ceiling)


def _error_from(status: int, raw: bytes) -> PredictionAPIError:
    """Turn an error response into a typed error carrying the API's `detail`."""
    detail: str | None = None
    title: str | None = None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        detail = str(data["detail"]) if data.get("detail") is not None else None
        title = str(data["title"]) if data.get("title") is not None else None
    if detail is None:
        detail = f"The prediction API answered {status}."
    if status == 429:
        return RateLimited(detail, status=status, title=title)
    if status == 404:
        return PredictionNotFound(detail, status=status, title=title)
    if status >= 500:
        return ServiceUnavailable(detail, status=status, title=title)
    return PredictionAPIError(detail, status=status, title=title)


def _retry_after(value: str | None) -> float | None:
    """Parse Retry-After given in seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _normalise(value: Mapping[str, Any]) -> dict[str, Any]:
    """Compare inputs by value, treating 7.5 and 7.50 alike."""
    return {
        key: (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
        for key, v in value.items()
    }
