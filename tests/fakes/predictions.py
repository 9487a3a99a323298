"""Protocol-level fake of Replicate's HTTP prediction API (lucataco/animate-diff) for tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import string
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from time import monotonic
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes.local_server import LocalServer

__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_VERSION",
    "FOREIGN_HOST",
    "MODEL",
    "MODEL_PATHS",
    "MOTION_MODULES",
    "SAMPLE_PATH",
    "Behaviour",
    "FakePrediction",
    "FakePredictionAPI",
    "Fault",
    "ManualClock",
    "OtherHost",
    "RandomFaults",
    "RecordedRequest",
    "WebhookDelivery",
    "request_kind",
]

T = TypeVar("T")

Status = Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
Outcome = Literal["succeeded", "failed", "canceled", "aborted"]
OutputKind = Literal["url", "data", "list"]

MODEL = "lucataco/animate-diff"
DEFAULT_TOKEN = "test-replicate-token"
DEFAULT_VERSION = "beecf59c4aee8d81bf04f0381033dfa10dc16e845b4ae00d281e2fa377e48a9f"
SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "animatediff-sample.mp4"
FOREIGN_HOST = "elsewhere.invalid"
MODEL_PATHS = (
    "toonyou_beta3.safetensors",
    "lyriel_v16.safetensors",
    "rcnzCartoon3d_v10.safetensors",
    "majicmixRealistic_v5Preview.safetensors",
    "realisticVisionV40_v20Novae.safetensors",
)
MOTION_MODULES = ("mm_sd_v14", "mm_sd_v15", "mm_sd_v15_v2")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
DEFAULT_STEPS = 25
FRAMES = 16
MAX_SEED = 2147483647
ID_ALPHABET = string.ascii_lowercase + string.digits
CREATE_FIELDS = frozenset({"version", "input", "stream", "webhook", "webhook_events_filter"})
PREFER_WAIT = re.compile(r"^wait(?:=(\d+))?$")
# Stand-in used when the reference sample is absent (starts like a real MP4: an ftyp box).


@dataclass(frozen=True)
class Behaviour:
    """How one fake prediction runs: timings, outcome, output shape and pause points."""

    queue_time: float = 0.05
    step_time: float = 0.005
    frame_time: float = 0.002
    outcome: Outcome = "succeeded"
    error: str = "CUDA out of memory. Tried to allocate 2.00 GiB"
    output_kind: OutputKind = "url"
    hold: asyncio.Event | None = None
    hold_starting: asyncio.Event | None = None


@dataclass
class RecordedRequest:
    """One HTTP request received by the fake, as it arrived."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any | None
    time: float

    @classmethod
    def of(cls, request: web.Request, body: Any | None) -> RecordedRequest:
        """Record `request` as it arrives now, with its `body` as the caller read it."""
        return cls(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            json=body,
            time=monotonic(),
        )

    def header(self, name: str) -> str | None:
        """Return a header value looked up case-insensitively, or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass
class Fault:
    """A scripted answer that replaces the next `times` matching requests."""

    method: str
    pattern: re.Pattern[str]
    status: int = 500
    body: str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    content_type: str = "application/json"
    times: int = 1
    drop: bool = False
    delay: float = 0.0
    after_create: bool = False

    def matches(self, method: str, path: str) -> bool:
        """Tell whether this fault applies to a request (method, path fully matching)."""
        return (self.method == "*" or self.method == method.upper()) and bool(
            self.pattern.fullmatch(path)
        )


@dataclass
class FakePrediction:
    """Mutable server-side state of one prediction."""

    id: str
    version: str
    input: dict[str, Any]
    behaviour: Behaviour
    seq: int
    seed: int
    origin: str
    model: str = MODEL
    status: Status = "starting"
    output: Any = None
    error: str | None = None
    logs: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    completed_at: datetime | None = None
    data_removed: bool = False
    source: str = "api"
    created_mono: float = field(default_factory=monotonic)
    started_mono: float | None = None
    completed_mono: float | None = None  # real monotonic instant it ended (benchmarks' lag)
    created_virtual: float = 0.0  # on a ManualClock: when it was created
    webhook: str | None = None
    webhook_events: frozenset[str] = frozenset()
    links_base: str = f"https://{FOREIGN_HOST}/v1"  # where urls.get and urls.cancel point
    output_base: str | None = None  # where the output is served; None: {origin}/files
    last_logs_event: float = float("-inf")
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        """Whether the prediction has reached a final status."""
        return self.status in TERMINAL_STATUSES

    @property
    def steps(self) -> int:
        """Number of sampling steps the run goes through."""
        steps = self.input.get("steps", DEFAULT_STEPS)
        return steps if isinstance(steps, int) else DEFAULT_STEPS

    @property
    def file_name(self) -> str:
        """Name of the output file served under /files/."""
        return f"{self.id}.mp4"

    @property
    def output_url(self) -> str:
        """URL at which the fake (or the server at `output_base`) serves this prediction's video."""
        if self.output_base is not None:
            return f"{self.output_base.rstrip('/')}/{self.file_name}"
        return f"{self.origin}/files/{self.file_name}"

    @property
    def urls(self) -> dict[str, str]:
        """The `urls` object; get/cancel deliberately point at a foreign host."""
        api = f"{self.links_base}/predictions/{self.id}"
        return {
            "get": api,
            "cancel": f"{api}/cancel",
            "web": f"https://replicate.com/p/{self.id}",
            "stream": f"https://stream.{FOREIGN_HOST}/v1/streams/{self.id}",
        }

    def to_json(self, *, with_logs: bool = True) -> dict[str, Any]:
        """Render the prediction as the API does."""
        body: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "logs": self.logs,
            "output": self.output,
            "data_removed": self.data_removed,
            "error": self.error,
            "source": self.source,
            "status": self.status,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "metrics": dict(self.metrics),
            "urls": self.urls,
        }
        if not with_logs:
            del body["logs"]
        return body


def _iso(moment: datetime | None) -> str | None:
    """Format a UTC datetime like Replicate does (microseconds, Z suffix)."""
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id() -> str:
    """Return a Replicate-style prediction id: 26 chars of [a-z0-9]."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(26))


def _interval(seconds: float) -> str:
    """Format seconds as tqdm does ([h:]mm:ss)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def tqdm_line(n: int, total: int, elapsed: float) -> str:
    """Render one tqdm progress line (width-10 `#` bar) ending with a newline."""
    fraction = n / total if total else 1.0
    filled = int(fraction * 10)
    bar = "#" * filled + " " * (10 - filled)
    rate = n / elapsed if n and elapsed > 0 else 0.0
    if not rate:
        rate_text, remaining = "?it/s", "?"
    else:
        rate_text = f"{1 / rate:5.2f}s/it" if rate < 1 else f"{rate:5.2f}it/s"
        remaining = _interval((total - n) / rate)
    return (
        f"{fraction * 100:4.0f}%|{bar}| {n}/{total} "
        f"[{_interval(elapsed)}<{remaining}, {rate_text}]\n"
    )


def _json_type(value: object) -> str:
    """Name a JSON value's type the way JSON-schema errors do."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def validate_input(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check an input object against lucataco/animate-diff's schema; return (field, message)."""
    problems: list[tuple[str, str]] = []
    known = {"prompt", "n_prompt", "path", "motion_module", "steps", "guidance_scale", "seed"}
    problems.extend(
        ("input", f"Additional property {key} is not allowed") for key in data if key not in known
    )
    if "prompt" not in data:
        problems.append(("input", "prompt is required"))
    for name in ("prompt", "n_prompt", "path", "motion_module"):
        if name in data and not isinstance(data[name], str):
            given = _json_type(data[name])
            problems.append((f"input.{name}", f"Invalid type. Expected: string, given: {given}"))
    for name, choices in (("path", MODEL_PATHS), ("motion_module", MOTION_MODULES)):
        value = data.get(name)
        if isinstance(value, str) and value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            problems.append(
                (f"input.{name}", f"input.{name} must be one of the following: {allowed}")
            )
    numeric: tuple[tuple[str, bool, float | None, float | None], ...] = (
        ("steps", True, 1, 100),
        ("guidance_scale", False, 1, 10),
        ("seed", True, None, None),
    )
    for name, integer, low, high in numeric:
        if name not in data:
            continue
        value = data[name]
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if (
            isinstance(value, bool)
            or not ok_type
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            expected = "integer" if integer else "number"
            given = _json_type(value)
            message = f"Invalid type. Expected: {expected}, given: {given}"
            problems.append((f"input.{name}", message))
        elif low is not None and value < low:
            problems.append((f"input.{name}", f"Must be greater than or equal to {low:g}"))
        elif high is not None and value > high:
            problems.append((f"input.{name}", f"Must be less than or equal to {high:g}"))
    return problems


def _json_response(
    payload: object, status: int = 200, content_type: str = "application/json"
) -> web.Response:
    """Build a JSON response whose Content-Type carries no charset parameter."""
    return web.Response(body=json.dumps(payload).encode(), status=status, content_type=content_type)


def _problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    """Build an RFC 7807 error answer as the API sends it."""
    payload = {"title": title, "detail": detail, "status": status, **extra}
    return _json_response(payload, status, "application/problem+json")


def _unauthenticated() -> web.Response:
    """Answer a request that lacks a valid bearer token."""
    return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")


def _not_found() -> web.Response:
    """Answer a request for an unknown prediction or file."""
    return _json_response({"detail": "Not found.", "status": 404}, 404)


# ---- seeded random faults (soak runs) ----------------------------------------------------
#
# Separate from the scripted `inject` faults: those replace chosen requests in a test, these
# hit a random share of every request, as a flaky upstream does. Every fault here is
# transient: a fault drawn before handling leaves the request unexecuted, so retrying is
# always safe; only a create may also be answered badly *after* its prediction was made (the
# "outcome unknown" case a client must resolve by looking the prediction up, not creating it
# again).

_HTML_PAGE = (
    "<html><head><title>{code} {phrase}</title></head><body><center><h1>{code} {phrase}</h1>"
    "</center><hr><center>nginx</center></body></html>"
)
_TRUNCATED_JSON = '{"id": "'
BEFORE_KINDS = ("429", "429-retry-after", "500", "502", "503", "drop", "stall", "bad-json")
FILE_KINDS = ("429", "429-retry-after", "500", "502", "503", "drop", "stall")
AFTER_CREATE_KINDS = ("drop-after-create", "502-after-create", "bad-json-after-create")


def request_kind(method: str, path: str, prefix: str = "/v1") -> str:
    """Name what a request to the fake asks for: create, poll, list, cancel, download."""
    api = re.escape(prefix)
    if path == f"{prefix}/predictions":
        return "create" if method == "POST" else "list"
    if re.fullmatch(rf"{api}/predictions/[^/]+/cancel", path):
        return "cancel"
    if re.fullmatch(rf"{api}/predictions/[^/]+", path):
        return "poll"
    if path.startswith("/files/"):
        return "download"
    return "other"


@dataclass
class RandomFaults:
    """A seeded share of requests answered with a random transient fault."""

    rate: float
    rng: random.Random
    retry_after_max: float = 2.0
    stall: float = 1.0
    after_create_share: float = 0.3
    include_files: bool = True
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    api_prefix: str = "/v1"

    def draw(self, method: str, path: str) -> Fault | None:
        """Decide whether this request fails, and how; count what was drawn."""
        kind = request_kind(method, path, self.api_prefix)
        if kind == "other" or (kind == "download" and not self.include_files):
            return None
        if self.rng.random() >= self.rate:
            return None
        if kind == "create" and self.rng.random() < self.after_create_share:
            name = self.rng.choice(AFTER_CREATE_KINDS)
        else:
            name = self.rng.choice(FILE_KINDS if kind == "download" else BEFORE_KINDS)
        self.counts[(kind, name)] += 1
        return self._fault(method, name, created=kind == "create")

    def _fault(self, method: str, name: str, *, created: bool) -> Fault:
        """Build the answer a fault kind stands for."""
        fault = Fault(method=method.upper(), pattern=re.compile(".*"))
        base = name.removesuffix("-after-create")
        fault.after_create = name.endswith("-after-create")
        if base == "429":
            fault.status = 429
            fault.body = {"detail": "Request was throttled.", "status": 429}
        elif base == "429-retry-after":
            fault.status = 429
            wait = round(self.rng.uniform(0, self.retry_after_max), 1)
            fault.headers = {"Retry-After": f"{wait:g}"}
            fault.body = {"detail": f"Request was throttled. Expected in {wait:g}s.", "status": 429}
        elif base in ("500", "502", "503"):
            fault.status = int(base)
            fault.body = _HTML_PAGE.format(code=base, phrase=HTTPStatus(fault.status).phrase)
            fault.content_type = "text/html"
        elif base == "drop":
            fault.drop = True
        elif base == "stall":
            # Hangs, then hangs up: what a read time-out looks like from the client's side.
            fault.drop = True
            fault.delay = self.rng.uniform(self.stall / 2, self.stall)
        elif base == "bad-json":
            fault.status = 201 if created else 200
            fault.body = _TRUNCATED_JSON
        return fault

    @property
    def total(self) -> int:
        """Faults drawn so far."""
        return sum(self.counts.values())


class FakePredictionAPI(LocalServer):
    """An aiohttp server on 127.0.0.1 that behaves like Replicate's prediction API."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        version: str = DEFAULT_VERSION,
        sample: bytes | None = None,
        time_scale: float = 1.0,
        clock: ManualClock | None = None,
        path_prefix: str = "/v1",
    ) -> None:
        """Configure the fake; call start() (or use `async with`) to serve.

        `path_prefix` is where the API is served (`/replicate/v1`: as a gateway may serve it);
        files stay under /files/.

        `time_scale` < 1 runs every duration (behaviour times, Prefer: wait holds) that much
        faster while logs, timestamps and metrics still read in unscaled seconds. A `clock`
        instead computes each prediction's state from that clock when asked (no tasks run).
        """
        super().__init__()
        self.token = token
        self.version = version
        if sample is None:
            sample = SAMPLE_PATH.read_bytes()
        self.sample: bytes = sample
        self.behaviour_for: Callable[[dict[str, Any]], Behaviour] = lambda _input: Behaviour()
        self.next_behaviours: list[Behaviour] = []
        self.page_size = 100
        self.path_prefix = "/" + path_prefix.strip("/")
        # Another host's base, for gateways: None keeps urls.get at https://elsewhere.invalid,
        # the list's `next` on base_url, and outputs under this fake's /files/.
        self.urls_base: str | None = None
        self.next_base: str | None = None
        self.output_base: str | None = None
        self.requests: list[RecordedRequest] = []
        self.predictions: dict[str, FakePrediction] = {}
        self.faults: list[Fault] = []
        self.random_faults: RandomFaults | None = None
        self.base_url = ""
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed_event = asyncio.Event()
        self._closing = asyncio.Event()
        self.time_scale = time_scale
        self.clock = clock
        self._epoch = time.time()
        self._mono0 = monotonic()
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.webhook_deliveries: list[WebhookDelivery] = []
        # The most predictions starting or processing at one time (real time; on a ManualClock,
        # as last settled): what a limit on running predictions must keep under.
        self.most_at_once = 0
        self._webhook_session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Bind a random free port on 127.0.0.1 and begin serving."""
        app = web.Application(middlewares=[self._middleware])
        api = self.path_prefix
        app.router.add_post(f"{api}/predictions", self._create)
        app.router.add_get(f"{api}/predictions", self._list)
        app.router.add_get(f"{api}/predictions/{{id}}", self._get)
        app.router.add_post(f"{api}/predictions/{{id}}/cancel", self._cancel)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get(f"{api}/webhooks/default/secret", self._webhook_secret_answer)
        await self.start_app(app)
        self.base_url = f"{self.origin}{self.path_prefix}"

    async def close(self) -> None:
        """Stop lifecycle tasks and held requests, then shut the server down."""
        self._closing.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._webhook_session is not None:
            await self._webhook_session.close()
            self._webhook_session = None
        await super().close()

    # ---- test-facing helpers -------------------------------------------------------------

    @property
    def creates(self) -> int:
        """Predictions actually created through the API (each one would be paid for)."""
        return len(self.predictions)

    @property
    def create_requests(self) -> int:
        """POST /v1/predictions requests received, whatever they were answered."""
        return self._count("POST", rf"{re.escape(self.path_prefix)}/predictions")

    @property
    def create_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every POST /v1/predictions, in order."""
        return [
            r.json
            for r in self.requests
            if r.method == "POST"
            and r.path == f"{self.path_prefix}/predictions"
            and isinstance(r.json, dict)
        ]

    @property
    def polls(self) -> int:
        """GET /v1/predictions/{id} requests received."""
        return self._count("GET", rf"{re.escape(self.path_prefix)}/predictions/[^/]+")

    @property
    def cancels(self) -> int:
        """POST /v1/predictions/{id}/cancel requests received."""
        return self._count("POST", rf"{re.escape(self.path_prefix)}/predictions/[^/]+/cancel")

    @property
    def downloads(self) -> int:
        """GET requests for output files received."""
        return self._count("GET", r"/files/.+")

    @property
    def unauthorized_downloads(self) -> int:
        """Output file downloads that carried an Authorization header (must stay 0)."""
        return sum(
            1
            for r in self.requests
            if r.method == "GET"
            and re.fullmatch(r"/files/.+", r.path)
            and r.header("Authorization") is not None
        )

    @property
    def latest(self) -> FakePrediction:
        """The most recently created prediction (LookupError if there is none yet)."""
        if not self.predictions:
            raise LookupError("no prediction has been created yet")
        return max(self.predictions.values(), key=lambda p: p.seq)

    def inject(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 500,
        body: str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        times: int = 1,
        drop: bool = False,
        delay: float = 0.0,
        after_create: bool = False,
    ) -> Fault:
        """Answer the next `times` requests whose path fully matches the regex with a fault."""
        fault = Fault(
            method=method.upper(),
            pattern=re.compile(path_pattern),
            status=status,
            body=body,
            headers=headers,
            content_type=content_type,
            times=times,
            drop=drop,
            delay=delay,
            after_create=after_create,
        )
        self.faults.append(fault)
        return fault

    def set_fault_rate(
        self,
        rate: float,
        rng: random.Random,
        *,
        retry_after_max: float = 2.0,
        stall: float = 1.0,
        after_create_share: float = 0.3,
        include_files: bool = True,
    ) -> RandomFaults | None:
        """Fail a seeded random share of requests with transient faults (rate 0 turns it off)."""
        if rate <= 0:
            self.random_faults = None
        else:
            self.random_faults = RandomFaults(
                rate=rate,
                rng=rng,
                retry_after_max=retry_after_max,
                stall=stall,
                after_create_share=after_create_share,
                include_files=include_files,
                api_prefix=self.path_prefix,
            )
        return self.random_faults

    def requests_by_kind(self) -> Counter[str]:
        """Count received requests by what they asked for (create, poll, list, ...)."""
        return Counter(request_kind(r.method, r.path, self.path_prefix) for r in self.requests)

    def expire(self, prediction_id: str) -> None:
        """Remove output and logs as Replicate does an hour after completion."""
        prediction = self.predictions[prediction_id]
        prediction.output = None
        prediction.logs = ""
        prediction.data_removed = True
        self._changed()

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        """Return the first truthy predicate value (LookupError counts as not yet), per change."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed_event
                    try:
                        value = predicate()
                    except LookupError:
                        value = None
                    if value:
                        return value
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(f"condition not met within {timeout} s") from None

    # ---- internals ----------------------------------------------------------------------

    def _changed(self) -> None:
        """Wake every wait_for() so it re-evaluates its predicate."""
        event, self._changed_event = self._changed_event, asyncio.Event()
        event.set()

    def _count(self, method: str, path_regex: str) -> int:
        """Count recorded requests with this method whose path fully matches."""
        return sum(
            1 for r in self.requests if r.method == method and re.fullmatch(path_regex, r.path)
        )

    def _take_fault(self, method: str, path: str) -> Fault | None:
        """Consume one use of the first fault matching a request."""
        for fault in self.faults:
            if fault.matches(method, path):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short when the fake closes."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def _answer_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        """Produce a scripted fault: optionally wait, then answer or drop the connection."""
        await self._pause(fault.delay)
        if fault.drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if fault.body is None:
            try:
                phrase = HTTPStatus(fault.status).phrase
            except ValueError:
                phrase = "Error"
            payload: bytes = json.dumps(
                {"title": phrase, "detail": phrase, "status": fault.status}
            ).encode()
        elif isinstance(fault.body, str):
            payload = fault.body.encode()
        else:
            payload = json.dumps(dict(fault.body)).encode()
        response = web.Response(body=payload, status=fault.status)
        response.content_type = fault.content_type
        for name, value in (fault.headers or {}).items():
            response.headers[name] = value
        return response

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Handler,
    ) -> web.StreamResponse:
        """Record every request, apply faults and auth, and turn routing errors into JSON."""
        raw = await request.read()
        try:
            parsed: Any | None = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        self.requests.append(RecordedRequest.of(request, parsed))
        self._changed()
        try:
            fault = self._take_fault(request.method, request.path)
            if fault is None and self.random_faults is not None:
                fault = self.random_faults.draw(request.method, request.path)
            if fault is not None and not fault.after_create:
                return await self._answer_fault(request, fault)
            if request.path.startswith(f"{self.path_prefix}/") and not self._authorized(request):
                response: web.StreamResponse = _unauthenticated()
            else:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    response = _json_response(
                        {"detail": exc.reason, "status": exc.status}, exc.status
                    )
            if fault is not None:
                return await self._answer_fault(request, fault)
            return response
        finally:
            self._changed()

    def _authorized(self, request: web.Request) -> bool:
        """Check the bearer token."""
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    def _version_ok(self, version: object) -> bool:
        """Accept the configured version id, bare or as owner/name:id."""
        if not isinstance(version, str):
            return False
        if version == self.version:
            return True
        ref, _, vid = version.rpartition(":")
        return vid == self.version and re.fullmatch(r"[\w.-]+/[\w.-]+", ref) is not None

    async def _create(self, request: web.Request) -> web.Response:
        """POST /v1/predictions: validate, create, optionally hold per `Prefer: wait`."""
        wait: float | None = None
        for token in request.headers.get("Prefer", "").split(","):
            match = PREFER_WAIT.match(token.strip())
            if match is None:
                continue
            wait = float(match.group(1) or 60)
            if not 1 <= wait <= 60:
                return _problem(
                    422,
                    "Invalid Prefer header",
                    "Prefer: wait must be between 1 and 60 seconds",
                )
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _problem(400, "Invalid JSON", "The request body is not valid JSON")
        if not isinstance(body, dict):
            given = _json_type(body)
            return self._invalid([("(root)", f"Invalid type. Expected: object, given: {given}")])
        problems: list[tuple[str, str]] = [
            ("(root)", f"Additional property {key} is not allowed")
            for key in body
            if key not in CREATE_FIELDS
        ]
        if "version" not in body:
            problems.append(("(root)", "version is required"))
        if "input" not in body:
            problems.append(("(root)", "input is required"))
        elif not isinstance(body["input"], dict):
            given = _json_type(body["input"])
            problems.append(("input", f"Invalid type. Expected: object, given: {given}"))
        if problems:
            return self._invalid(problems)
        if not self._version_ok(body["version"]):
            return _problem(
                422,
                "Invalid version or not permitted",
                "Invalid version or not permitted: the specified version does not exist "
                "(or perhaps you don't have permission to use it?)",
            )
        problems = validate_input(body["input"])
        if problems:
            return self._invalid(problems)
        webhook = body.get("webhook")
        events = body.get("webhook_events_filter")
        if webhook is not None and not isinstance(webhook, str):
            return self._invalid([("webhook", "Invalid type. Expected: string")])
        if events is not None and (
            not isinstance(events, list) or not set(events) <= set(WEBHOOK_EVENTS)
        ):
            return self._invalid([("webhook_events_filter", "Invalid webhook events filter")])
        prediction = self._spawn(dict(body["input"]))
        if webhook:
            prediction.webhook = webhook
            prediction.webhook_events = frozenset(events or DEFAULT_WEBHOOK_EVENTS)
        status = 201
        if wait is not None and self.clock is not None:
            # Hold on the manual clock: jump to the end, or to the end of the window.
            finish = self._clocked_finish(prediction)
            self.clock.now = min(finish, self.clock.now + wait) if finish else self.clock.now + wait
            self._settle(prediction)
            if not prediction.terminal:
                status = 202
        elif wait is not None:
            done = asyncio.ensure_future(prediction.done.wait())
            closing = asyncio.ensure_future(self._closing.wait())
            _, pending = await asyncio.wait(
                {done, closing}, timeout=wait * self.time_scale, return_when=asyncio.FIRST_COMPLETED
            )
            for future in pending:
                future.cancel()
            if not prediction.terminal:
                status = 202
        return _json_response(prediction.to_json(), status)

    @staticmethod
    def _invalid(problems: list[tuple[str, str]]) -> web.Response:
        """Answer 422 listing every invalid field."""
        detail = "".join(f"- {name}: {message}\n" for name, message in problems)
        fields = [{"field": name, "description": message} for name, message in problems]
        return _problem(422, "Input validation failed", detail, invalid_fields=fields)

    def _spawn(self, data: dict[str, Any]) -> FakePrediction:
        """Create a prediction and start its lifecycle task."""
        if self.next_behaviours:
            behaviour = self.next_behaviours.pop(0)
        else:
            behaviour = self.behaviour_for(data)
        seed = data.get("seed")
        if not isinstance(seed, int) or seed <= 0:
            seed = random.randint(1, MAX_SEED)
        self._seq += 1
        prediction = FakePrediction(
            id=_new_id(),
            version=self.version,
            input=data,
            behaviour=behaviour,
            seq=self._seq,
            seed=seed,
            origin=self.origin,
            created_at=self._now(),
            links_base=self.urls_base or f"https://{FOREIGN_HOST}{self.path_prefix}",
            output_base=self.output_base,
        )
        self.predictions[prediction.id] = prediction
        active = sum(not p.terminal for p in self.predictions.values())
        self.most_at_once = max(self.most_at_once, active)
        if self.clock is not None:
            prediction.created_virtual = self.clock.now
            self._changed()
            return prediction
        task = asyncio.get_running_loop().create_task(self._run(prediction))
        prediction.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._changed()
        return prediction

    def _lookup(self, request: web.Request) -> FakePrediction | None:
        """Find the prediction named in the URL."""
        return self.predictions.get(request.match_info["id"])

    async def _get(self, request: web.Request) -> web.Response:
        """GET /v1/predictions/{id}."""
        prediction = self._lookup(request)
        if prediction is None:
            return _not_found()
        self._settle(prediction)
        return _json_response(prediction.to_json())

    async def _cancel(self, request: web.Request) -> web.Response:
        """POST /v1/predictions/{id}/cancel: cancel unless already terminal."""
        prediction = self._lookup(request)
        if prediction is None:
            return _not_found()
        self._settle(prediction)
        if not prediction.terminal:
            if prediction.task is not None:
                prediction.task.cancel()
            self._finish(prediction, "canceled")
        return _json_response(prediction.to_json())

    async def _list(self, request: web.Request) -> web.Response:
        """GET /v1/predictions: newest first, cursor-paginated."""
        for prediction in self.predictions.values():
            self._settle(prediction)
        ordered = sorted(self.predictions.values(), key=lambda p: p.seq, reverse=True)
        cursor = request.query.get("cursor")
        if cursor is not None:
            try:
                before = int(base64.urlsafe_b64decode(cursor.encode()).decode().removeprefix("s:"))
            except ValueError:
                return _problem(400, "Invalid cursor", "Invalid cursor")
            ordered = [p for p in ordered if p.seq < before]
        page = ordered[: self.page_size]
        next_url: str | None = None
        if len(ordered) > self.page_size:
            token = base64.urlsafe_b64encode(f"s:{page[-1].seq}".encode()).decode()
            next_url = f"{self.next_base or self.base_url}/predictions?cursor={token}"
        results = [p.to_json(with_logs=False) for p in page]
        return _json_response({"next": next_url, "previous": None, "results": results})

    async def _file(self, request: web.Request) -> web.Response:
        """GET /files/{name}: serve the sample video without requiring auth."""
        name = request.match_info["name"]
        prediction = self.predictions.get(name.removesuffix(".mp4"))
        if prediction is not None:
            self._settle(prediction)
        if (
            prediction is None
            or name != prediction.file_name
            or prediction.status != "succeeded"
            or prediction.data_removed
        ):
            return _not_found()
        return web.Response(body=self.sample, content_type="video/mp4")

    def _log(self, prediction: FakePrediction, line: str) -> None:
        """Append a log line and announce the change."""
        prediction.logs += line
        self._changed()
        if "logs" in prediction.webhook_events:
            # Replicate sends `logs` events at most every 500 ms.
            now = monotonic()
            if now - prediction.last_logs_event >= 0.5 * self.time_scale:
                prediction.last_logs_event = now
                self._send_webhook(prediction, "logs")

    def _finish(self, prediction: FakePrediction, status: Status, error: str | None = None) -> None:
        """Move a prediction to a terminal status with timestamps and metrics."""
        now = monotonic()
        prediction.status = status
        prediction.error = error
        prediction.completed_at = self._now()
        prediction.completed_mono = now
        if self.clock is not None:
            # Timestamps and metrics come from the manual clock (_settle), not real time.
            prediction.done.set()
            self._changed()
            return
        metrics: dict[str, float] = {}
        scale = self.time_scale
        if prediction.started_mono is not None:
            metrics["predict_time"] = round((now - prediction.started_mono) / scale, 6)
        metrics["total_time"] = round((now - prediction.created_mono) / scale, 6)
        prediction.metrics = metrics
        prediction.done.set()
        self._changed()
        self._send_webhook(prediction, "completed")

    def _output(self, prediction: FakePrediction) -> Any:
        """Build the output value for the behaviour's output kind."""
        kind = prediction.behaviour.output_kind
        if kind == "data":
            return "data:video/mp4;base64," + base64.b64encode(self.sample).decode()
        if kind == "list":
            return [prediction.output_url]
        return prediction.output_url

    async def _run(self, prediction: FakePrediction) -> None:
        """Drive one prediction from starting to its behaviour's outcome."""
        behaviour = prediction.behaviour
        if behaviour.hold_starting is not None:
            await behaviour.hold_starting.wait()
        scale = self.time_scale
        await asyncio.sleep(behaviour.queue_time * scale)
        if prediction.terminal:
            return
        if behaviour.outcome == "aborted":
            self._finish(prediction, "aborted")
            return
        prediction.status = "processing"
        prediction.started_at = self._now()
        prediction.started_mono = monotonic()
        self._send_webhook(prediction, "start")
        self._log(prediction, f"Using seed: {prediction.seed}\n")
        total = prediction.steps
        halfway = max(1, total // 2)
        began = monotonic()
        self._log(prediction, tqdm_line(0, total, 0.0))
        for n in range(1, total + 1):
            await asyncio.sleep(behaviour.step_time * scale)
            if prediction.terminal:
                return
            self._log(prediction, tqdm_line(n, total, (monotonic() - began) / scale))
            if n != halfway:
                continue
            if behaviour.hold is not None:
                await behaviour.hold.wait()
                if prediction.terminal:
                    return
            if behaviour.outcome == "failed":
                self._finish(prediction, "failed", behaviour.error)
                return
            if behaviour.outcome == "canceled":
                self._finish(prediction, "canceled")
                return
        began = monotonic()
        self._log(prediction, tqdm_line(0, FRAMES, 0.0))
        for n in range(1, FRAMES + 1):
            await asyncio.sleep(behaviour.frame_time * scale)
            if prediction.terminal:
                return
            self._log(prediction, tqdm_line(n, FRAMES, (monotonic() - began) / scale))
        prediction.output = self._output(prediction)
        self._finish(prediction, "succeeded")

    @property
    def timeline(self) -> tuple[float, float]:
        """Unix and monotonic seconds of the same instant: the origin of the scaled time."""
        return self._epoch, self._mono0

    def _now(self) -> datetime:
        """The API's idea of now: the manual clock, or real time run `time_scale` times faster."""
        if self.clock is not None:
            return datetime.fromtimestamp(self.clock.now, UTC)
        return datetime.fromtimestamp(
            self._epoch + (monotonic() - self._mono0) / self.time_scale, UTC
        )

    # ---- predictions on a manual clock ----------------------------------------------------
    #
    # With a ManualClock nothing runs by itself: every request first works out where each
    # prediction stands at the clock's `now`, and a held create moves the clock to the end
    # of the prediction or of the wait window. Tests of polling get exact times, no sleeps.

    def _clocked_finish(self, prediction: FakePrediction) -> float | None:
        """When a prediction on the manual clock succeeds, or None if it never will by itself."""
        behaviour = prediction.behaviour
        if behaviour.outcome != "succeeded" or prediction.terminal:
            return None
        return (
            prediction.created_virtual
            + behaviour.queue_time
            + prediction.steps * behaviour.step_time
            + FRAMES * behaviour.frame_time
        )

    def _settle(self, prediction: FakePrediction) -> None:
        """Bring a prediction on the manual clock up to the clock's `now` (no-op otherwise)."""
        if self.clock is None or prediction.terminal:
            return
        behaviour = prediction.behaviour
        if behaviour.outcome != "succeeded":
            raise NotImplementedError("the manual clock runs only predictions that succeed")
        now = self.clock.now
        began = prediction.created_virtual + behaviour.queue_time
        if now < began:
            return
        prediction.status = "processing"
        prediction.started_at = datetime.fromtimestamp(began, UTC)
        total = prediction.steps
        # A hair of slack: float sums of step times must not fall just short of a step.
        done = min(total, int((now - began) / behaviour.step_time + 1e-9))
        logs = [f"Using seed: {prediction.seed}\n"]
        logs += [tqdm_line(n, total, n * behaviour.step_time) for n in range(done + 1)]
        if done == total:
            frames_began = began + total * behaviour.step_time
            frames = min(FRAMES, int((now - frames_began) / behaviour.frame_time + 1e-9))
            logs += [tqdm_line(n, FRAMES, n * behaviour.frame_time) for n in range(frames + 1)]
        prediction.logs = "".join(logs)
        finish = self._clocked_finish(prediction)
        if finish is not None and now >= finish:
            prediction.output = self._output(prediction)
            self._finish(prediction, "succeeded")
            prediction.completed_at = datetime.fromtimestamp(finish, UTC)
            prediction.metrics = {
                "predict_time": round(finish - began, 6),
                "total_time": round(finish - prediction.created_virtual, 6),
            }
        self._changed()

    # ---- webhooks ---------------------------------------------------------------------------
    #
    # As Replicate documents them: a create may name a `webhook` URL and the events it wants
    # (`webhook_events_filter`: start, output, logs, completed; output and completed by
    # default). Each delivery POSTs the prediction as JSON, signed Standard Webhooks style:
    # `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with
    # the base64 part of the secret that GET /v1/webhooks/default/secret returns. A delivery
    # that is not answered 2xx is retried a few times.

    async def _webhook_secret_answer(self, _request: web.Request) -> web.Response:
        """GET /v1/webhooks/default/secret."""
        return _json_response({"key": self.webhook_secret})

    def sign_webhook(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` header value for a delivery."""
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()

    def _send_webhook(self, prediction: FakePrediction, event: str) -> None:
        """Queue a signed delivery of the prediction's current state, if it asked for `event`."""
        wanted = prediction.webhook_events
        if prediction.webhook is None or not (
            event in wanted or (event == "completed" and "output" in wanted)
        ):
            return
        body = json.dumps(prediction.to_json()).encode()
        delivery = WebhookDelivery(
            url=prediction.webhook,
            event=event,
            prediction_id=prediction.id,
            message_id="msg_" + _new_id(),
            body=body,
            timestamp=int(time.time()),
        )
        self.webhook_deliveries.append(delivery)
        task = asyncio.get_running_loop().create_task(self._deliver_webhook(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_webhook(self, delivery: WebhookDelivery) -> None:
        """POST one delivery, retrying a few times until it is answered 2xx."""
        if self._webhook_session is None:
            # Replicate sends from many workers at once: no cap on connections here.
            self._webhook_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for _ in range(3):
            try:
                async with self._webhook_session.post(
                    delivery.url,
                    data=delivery.body,
                    headers=delivery.headers(self.sign_webhook),
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    delivery.answers.append(response.status)
                    if 200 <= response.status < 300:
                        break
            except (aiohttp.ClientError, TimeoutError):
                delivery.answers.append(0)
            await self._pause(0.2)
        self._changed()


WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
DEFAULT_WEBHOOK_EVENTS = ("output", "completed")


@dataclass
class WebhookDelivery:
    """One webhook request the fake sent (or is sending), and how it was answered."""

    url: str
    event: str
    prediction_id: str
    message_id: str
    body: bytes
    timestamp: int
    answers: list[int] = field(default_factory=list)  # status per attempt, 0: no answer

    def headers(self, sign: Callable[[str, int, bytes], str]) -> dict[str, str]:
        """The headers of this delivery, signed with `sign`."""
        return {
            "Content-Type": "application/json",
            "webhook-id": self.message_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": sign(self.message_id, self.timestamp, self.body),
        }


class ManualClock:
    """A clock that moves only when slept on or advanced: one timeline for fake and bot."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        """The current instant (used as both monotonic and wall time)."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Move the clock forward at once, then let other tasks run."""
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class OtherHost(LocalServer):
    """Another server on 127.0.0.1 (its own port): records every request it gets.

    It serves `body` for any GET under `serve_under` (an output file host, as a gateway's), and
    answers a path listed in `redirects` with a 302 to its target; anything else is 404.
    """

    shutdown_timeout = 0.5

    def __init__(self, *, body: bytes = b"", serve_under: str = "/outputs/") -> None:
        super().__init__()
        self.body = body
        self.serve_under = serve_under
        self.redirects: dict[str, str] = {}
        self.seen: list[RecordedRequest] = []

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`."""
        return self.origin.removeprefix("http://")

    async def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve every path."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        await self.start_app(app)

    async def _answer(self, request: web.Request) -> web.Response:
        """Record the request, then serve, redirect or answer 404."""
        raw = await request.read()
        self.seen.append(RecordedRequest.of(request, raw.decode(errors="replace") if raw else None))
        if request.path in self.redirects:
            return web.Response(status=302, headers={"Location": self.redirects[request.path]})
        if request.method == "GET" and request.path.startswith(self.serve_under):
            return web.Response(body=self.body, content_type="video/mp4")
        return _not_found()
