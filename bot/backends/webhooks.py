"""Receive the prediction API's webhooks: verify each delivery, then hand the prediction over.

Deliveries are signed the Standard Webhooks way, as Replicate documents it: the headers
`webhook-id`, `webhook-timestamp` and `webhook-signature` (space-separated `v1,<base64>`
entries) carry an HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed with the base64 part of
the account's secret (`whsec_...`, from `GET {base}/webhooks/default/secret`).

Every answer is chosen so that the sender does the right thing: 200 for a delivery taken (or
already taken: a replay changes nothing), 401 for a bad signature and 400 for a stale or
malformed one (neither is worth retrying), 503 while the secret cannot be had (retry later).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import yarl
from aiohttp import web

from bot.backends.base import Prediction, PredictionAPIError
from bot.observability.metrics import BotMetrics

log = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300.0  # Standard Webhooks' window for timestamps, either way
MAX_BODY_BYTES = 4 * 1024 * 1024  # a prediction with long logs; far above any real one
SECRET_REFRESH_SECONDS = 60.0  # a bad signature refetches the secret at most this often
MAX_REMEMBERED_IDS = 200_000


class WebhookRejected(Exception):
    """A delivery that is not taken; `status` is the HTTP answer, `kind` its class for metrics."""

    def __init__(self, reason: str, *, status: int, kind: str = "malformed") -> None:
        super().__init__(reason)
        self.status = status
        self.kind = kind


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The HMAC key of a `whsec_` secret."""

    key: bytes

    @classmethod
    def from_secret(cls, secret: str) -> SigningKey:
        """Decode `whsec_<base64>` (the prefix is optional)."""
        try:
            key = base64.b64decode(secret.strip().removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the webhook secret is not base64 after whsec_") from None
        if not key:
            raise ValueError("the webhook secret is empty")
        return cls(key)

    def sign(self, message_id: str, timestamp: str, body: bytes) -> str:
        """The base64 HMAC-SHA256 of one delivery."""
        signed = f"{message_id}.{timestamp}.".encode() + body
        return base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()

    def matches(self, message_id: str, timestamp: str, body: bytes, header: str) -> bool:
        """True if any `v1,` entry of the signature header is this key's signature."""
        expected = self.sign(message_id, timestamp, body).encode()
        for entry in header.split():
            version, _, signature = entry.partition(",")
            if version == "v1" and hmac.compare_digest(signature.encode(), expected):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Delivery:
    """One verified delivery."""

    message_id: str
    timestamp: int
    prediction: Prediction


class ReplayGuard:
    """Remembers the ids of taken deliveries for as long as their timestamps are accepted."""

    def __init__(self, tolerance: float = TOLERANCE_SECONDS, limit: int = MAX_REMEMBERED_IDS):
        self._tolerance = tolerance
        self._limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when it can be forgotten

    def seen(self, message_id: str) -> bool:
        """True if a delivery with this id was taken already."""
        return message_id in self._seen

    def remember(self, message_id: str, timestamp: float, now: float) -> None:
        """Note a taken delivery; forget those whose timestamps would now be stale anyway."""
        self._seen[message_id] = timestamp + self._tolerance
        self._seen.move_to_end(message_id)
        while self._seen:
            oldest, forget_at = next(iter(self._seen.items()))
            if forget_at >= now and len(self._seen) <= self._limit:
                break
            del self._seen[oldest]


class WebhookVerifier:
    """Checks signatures and timestamps with the account's secret, fetched when first needed."""

    def __init__(
        self,
        fetch_secret: Callable[[], Awaitable[str]],
        *,
        clock: Callable[[], float] = time.time,
        tolerance: float = TOLERANCE_SECONDS,
    ) -> None:
        self._fetch_secret = fetch_secret
        self._clock = clock
        self._tolerance = tolerance
        self._key: SigningKey | None = None
        self._fetched_at = float("-inf")

    async def load(self) -> None:
        """Fetch the secret now (at start), so the first delivery need not wait for it."""
        await self._refresh()

    async def verify(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        """Return the delivery if it is signed with the secret and fresh; else raise."""
        message_id = headers.get("webhook-id", "")
        timestamp_text = headers.get("webhook-timestamp", "")
        signature = headers.get("webhook-signature", "")
        if not (message_id and timestamp_text and signature):
            raise WebhookRejected("missing webhook headers", status=400)
        try:
            timestamp = int(timestamp_text)
        except ValueError:
            raise WebhookRejected("malformed webhook-timestamp", status=400) from None
        now = self._clock()
        if abs(now - timestamp) > self._tolerance:
            # A captured delivery replayed later, or a sender with a broken clock.
            raise WebhookRejected(
                f"timestamp {now - timestamp:+.0f} s off", status=400, kind="stale"
            )
        key = self._key or await self._refresh()
        signed = key.matches(message_id, timestamp_text, body, signature)
        if not signed and self._clock() - self._fetched_at >= SECRET_REFRESH_SECONDS:
            # The secret may have been rotated since it was fetched: look once more.
            key = await self._refresh()
            signed = key.matches(message_id, timestamp_text, body, signature)
        if not signed:
            raise WebhookRejected("bad signature", status=401, kind="bad_signature")
        try:
            prediction = Prediction.from_json(json.loads(body))
        except (ValueError, PredictionAPIError):
            raise WebhookRejected("the body is not a prediction", status=400) from None
        return Delivery(message_id, timestamp, prediction)

    async def _refresh(self) -> SigningKey:
        """Fetch and decode the secret; WebhookRejected(503) if the API cannot give it."""
        self._fetched_at = self._clock()
        try:
            secret = await self._fetch_secret()
            self._key = SigningKey.from_secret(secret)
        except Exception as exc:
            log.warning("could not fetch the webhook signing secret: %s", exc)
            raise WebhookRejected(
                "signing secret unavailable", status=503, kind="secret_unavailable"
            ) from None
        return self._key


class WebhookReceiver:
    """An aiohttp server taking signed prediction deliveries at one path."""

    def __init__(
        self,
        verifier: WebhookVerifier,
        on_prediction: Callable[[Prediction], None],
        *,
        public_url: str,
        clock: Callable[[], float] = time.time,
        metrics: BotMetrics | None = None,
    ) -> None:
        self._verifier = verifier
        self._on_prediction = on_prediction
        self._clock = clock
        self._metrics = metrics if metrics is not None else BotMetrics()
        self._replays = ReplayGuard()
        # The path of the public URL: a proxy in front forwards it unchanged.
        self.path = yarl.URL(public_url).path or "/"
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_post(self.path, self.handle)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the port listened on, once started
        self.taken = 0
        self.rejected = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0: any free port, see `port`)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        log.info("listening for prediction webhooks on %s:%s%s", host, self.port, self.path)
        try:
            await self._verifier.load()
        except WebhookRejected:
            log.warning("webhooks will be verified once the secret can be fetched")

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        """Take one delivery: verify it, drop replays, pass the prediction on."""
        body = await request.read()
        try:
            delivery = await self._verifier.verify(request.headers, body)
        except WebhookRejected as exc:
            self.rejected += 1
            self._metrics.webhook(False, exc.kind)
            log.warning("rejected a webhook delivery (%s): %s", exc.status, exc)
            return web.Response(status=exc.status, text=f"{exc}\n")
        if self._replays.seen(delivery.message_id):
            self._metrics.webhook(True, "replay")
            return web.Response(text="already taken\n")
        self._replays.remember(delivery.message_id, delivery.timestamp, self._clock())
        self.taken += 1
        self._metrics.webhook(True, "taken")
        self._on_prediction(delivery.prediction)
        return web.Response(text="taken\n")
