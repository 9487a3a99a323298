"""One Cog server: what its health checks and the bot's own bookkeeping say, and its requests.

Cog's HTTP API, as the server from PyPI `cog` 0.23.1 answers it: `GET /health-check` (its
`status`, and `setup.started_at`, which changes when the server restarts), `GET /openapi.json`
(the model's inputs), `PUT /predictions/{id}` (with `Prefer: respond-async`: 202 at once; a
second PUT of a running id answers its state), `POST /predictions` (held open until the end),
`POST /predictions/{id}/cancel`; 409 means every slot is busy, 503 that setup is not done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bot.backends.cog.outputs import data_answer_limit
from bot.observability.metrics import BotMetrics

log = logging.getLogger(__name__)

# The inputs of lucataco/animate-diff that the bot sends: a server must take every one.
MODEL_INPUTS = ("prompt", "n_prompt", "path", "motion_module", "steps", "guidance_scale", "seed")
USABLE = frozenset({"READY", "BUSY"})
BROKEN = frozenset({"SETUP_FAILED", "DEFUNCT", "UNHEALTHY"})
UNREACHABLE = "UNREACHABLE"
SMALL_ANSWER = 1024 * 1024  # a health check, a schema or a cancel: never a data: output
_CHUNK = 256 * 1024


class AnswerTooLarge(aiohttp.ClientPayloadError):
    """A server's answer was longer than its kind of request allows (read as no answer)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer: its status and its body as JSON (None if it was not JSON)."""

    status: int
    body: Any


@dataclass
class CogServer:
    """A server of the pool and what the bot knows of it."""

    name: str
    base_url: str
    health: str = "UNKNOWN"  # the last status read, or UNREACHABLE
    refused: str | None = None  # why it is never used (it serves another model)
    schema_checked: bool = False
    setup_started: str | None = None  # changes when the server restarts
    failures: int = 0  # health checks in a row without an answer
    unanswered_since: float | None = None  # the first of those checks (the bot's clock)
    answered_at: float | None = None  # its last Cog answer (the bot's clock, never the GPU's)
    # Busy with a prediction that is not ours (a 409 or a BUSY check while we had none).
    foreign_busy: bool = False
    running: set[str] = field(default_factory=set)  # our prediction ids placed here
    claimed: int = 0  # creates being sent to it

    @property
    def usable(self) -> bool:
        """Answering, set up, serving this model."""
        return self.refused is None and self.health in USABLE

    @property
    def idle(self) -> bool:
        """Usable and running nothing: a job may start here."""
        return self.usable and not self.foreign_busy and not self.running

    @property
    def free(self) -> bool:
        """Idle and not being sent a create by another job."""
        return self.idle and not self.claimed

    def unavailable(self) -> str:
        """Why it cannot run a prediction now, in words a member may read."""
        if self.refused is not None:
            return "its GPU server was taken out of use"
        if self.health == UNREACHABLE:
            return "its GPU server does not answer"
        if self.health in BROKEN:
            return "its GPU server is broken"
        if self.health in USABLE:
            return "its GPU server is busy"
        return "its GPU server is not ready yet"  # STARTING, or not yet checked

    def describe(self) -> str:
        """Its name and address, for the log and `animate-bot check`."""
        return f"{self.name} ({self.base_url})"


class CogHTTP:
    """The requests the pool sends to its servers, on the bot's shared session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        max_bytes: int = 100 * 1024 * 1024,
        metrics: BotMetrics | None = None,
    ) -> None:
        self._session = session
        self._timeout = timeout
        self._max_data_answer = data_answer_limit(max_bytes)
        self._metrics = metrics if metrics is not None else BotMetrics()

    async def health(self, server: CogServer, *, timeout: float | None = None) -> Answer:
        """GET /health-check."""
        return await self._send("GET", server, "/health-check", timeout=timeout)

    async def openapi(self, server: CogServer) -> Answer:
        """GET /openapi.json: the model's schema."""
        return await self._send("GET", server, "/openapi.json")

    async def put_async(
        self,
        server: CogServer,
        server_id: str,
        api_input: Mapping[str, Any],
        *,
        webhook: str | None,
    ) -> Answer:
        """PUT a prediction that answers at once; its progress and end go to `webhook`."""
        body: dict[str, Any] = {"id": server_id, "input": dict(api_input)}
        if webhook is not None:
            body["webhook"] = webhook
            # Not `output`: it carries the whole data: URI once more, before `completed` does.
            body["webhook_events_filter"] = ["start", "logs", "completed"]
        return await self._send(
            "PUT",
            server,
            f"/predictions/{server_id}",
            body=body,
            headers={"Prefer": "respond-async"},
        )

    async def post_held(
        self, server: CogServer, server_id: str, api_input: Mapping[str, Any], *, timeout: float
    ) -> Answer:
        """POST a prediction held open until it ends (no webhook: the answer is the end)."""
        body = {"id": server_id, "input": dict(api_input)}
        return await self._send("POST", server, "/predictions", body=body, timeout=timeout)

    async def cancel(self, server: CogServer, server_id: str) -> Answer:
        """POST /predictions/{id}/cancel."""
        return await self._send("POST", server, f"/predictions/{server_id}/cancel")

    async def _send(
        self,
        method: str,
        server: CogServer,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """One request, no retries (the pool decides what a failure means); aiohttp errors."""
        client_timeout = aiohttp.ClientTimeout(total=timeout or self._timeout)
        kind = _request_kind(path)
        # Only a create's answer (a held POST's end, a re-sent PUT's state) carries outputs.
        limit = self._max_data_answer if kind == "create" else SMALL_ANSWER
        try:
            async with self._session.request(
                method,
                server.base_url + path,
                json=body,
                headers=dict(headers or {}),
                timeout=client_timeout,
                allow_redirects=False,
            ) as response:
                raw = await _read_within(response, limit)
        except AnswerTooLarge:
            log.warning(
                "Cog server %s: its answer to %s %s is over %d bytes: refused",
                server.name,
                method,
                path,
                limit,
            )
            self._metrics.api_request(kind, None, backend=server.name)
            raise
        except (aiohttp.ClientError, TimeoutError):
            self._metrics.api_request(kind, None, backend=server.name)
            raise
        self._metrics.api_request(kind, response.status, backend=server.name)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Answer(response.status, parsed)


async def _read_within(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body; AnswerTooLarge past `limit` bytes (said or sent)."""
    if response.content_length is not None and response.content_length > limit:
        raise AnswerTooLarge(f"answer over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(f"answer over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_kind(path: str) -> str:
    """Name a request to a Cog server for the metrics: health, schema, create or cancel."""
    if path == "/health-check":
        return "health"
    if path == "/openapi.json":
        return "schema"
    return "cancel" if path.endswith("/cancel") else "create"


def missing_inputs(schema: object) -> list[str] | None:
    """The model inputs a server's OpenAPI schema lacks; None if the schema cannot be read."""
    if not isinstance(schema, dict):
        return None
    components = schema.get("components")
    schemas = components.get("schemas") if isinstance(components, dict) else None
    inputs = schemas.get("Input") if isinstance(schemas, dict) else None
    properties = inputs.get("properties") if isinstance(inputs, dict) else None
    if not isinstance(properties, dict):
        return None
    return [name for name in MODEL_INPUTS if name not in properties]


def error_detail(answer: Answer) -> str:
    """What a refusing server said, in a sentence."""
    body = answer.body
    if isinstance(body, dict):
        for key in ("detail", "error"):
            value = body.get(key)
            text = _input_problems(value) if isinstance(value, list) else value
            if text and isinstance(text, str):
                return " ".join(text.split())[:300]
    return f"The GPU server answered {answer.status}."


def _input_problems(details: list[object]) -> str | None:
    """Validation errors (`[{"loc": [..., "steps"], "msg": ...}]`) as one sentence."""
    problems: list[str] = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        loc, msg = detail.get("loc"), detail.get("msg")
        if not isinstance(msg, str) or not msg.strip():
            continue
        name = loc[-1] if isinstance(loc, list) and loc else None
        problems.append(f"{name}: {msg.strip()}" if name is not None else msg.strip())
    if not problems:
        return None
    return f"{'; '.join(problems)}."
