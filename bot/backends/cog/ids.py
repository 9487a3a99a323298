"""How the bot names its predictions on Cog servers, and the secrets their callbacks carry.

A Cog server takes the prediction id from its client, so the bot chooses one derived from the
job (`current_attempt`): after a restart it asks the same server for the same id. The id the
core stores names the server too (`cog:gpu-a:job-7-r0`), so no column is needed for it. The
id sent to the server adds a keyed hash, and each prediction's webhook and upload paths carry
another: Cog's callbacks are unsigned, and these are what a stranger on the network cannot
guess. Both hashes are keyed with a secret the bot derives from its own, so they survive a
restart without being stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

PREFIX = "cog:"
SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_KEY_CHARACTERS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class CogPredictionId:
    """A prediction of ours on one named server."""

    server: str
    key: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.server}:{self.key}"


def parse(prediction_id: str) -> CogPredictionId | None:
    """Read a stored prediction id; None if it is not one of a Cog server."""
    if not prediction_id.startswith(PREFIX):
        return None
    server, sep, key = prediction_id.removeprefix(PREFIX).partition(":")
    if not sep or not SERVER_NAME.match(server) or not key:
        return None
    return CogPredictionId(server, key)


def server_of(prediction_id: str | None) -> str | None:
    """The name of the Cog server a prediction runs on, or None for another backend's."""
    parsed = parse(prediction_id) if prediction_id else None
    return parsed.server if parsed else None


def clean_key(key: str) -> str:
    """Keep a key to the characters every server and URL takes."""
    return _KEY_CHARACTERS.sub("-", key.lower()).strip("-")[:60] or "prediction"


def derive_secret(bot_secret: str) -> bytes:
    """The key of every hash below, from a secret the bot already keeps (its Discord token)."""
    return hashlib.sha256(b"animate-bot cog callbacks\0" + bot_secret.encode()).digest()


class Naming:
    """Turns our prediction ids into server ids and callback tokens."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def server_id(self, prediction: CogPredictionId) -> str:
        """The id sent to the server: readable, with a hash no stranger can forge."""
        return f"{prediction.key}-{self._hash(b'id', str(prediction))[:16]}"

    def token(self, server_id: str) -> str:
        """The secret part of one prediction's webhook and upload paths."""
        return self._hash(b"callback", server_id)[:32]

    def _hash(self, purpose: bytes, value: str) -> str:
        """A keyed hash of `value` for one purpose."""
        return hmac.new(self._secret, purpose + b"\0" + value.encode(), hashlib.sha256).hexdigest()
