"""Protocol-level fake of Discord's REST API and gateway for driving a real discord.py client."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import json
import mimetypes
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakes.local_server import LocalServer

__all__ = [
    "BOT_PERMISSIONS",
    "DEFAULT_MEMBER_PERMISSIONS",
    "MANAGE_MESSAGES",
    "FakeAttachment",
    "FakeDiscord",
    "FakeInteraction",
    "FakeMessage",
    "RecordedRequest",
    "find_button",
    "shard_of",
    "walk_components",
]

T = TypeVar("T")
JSON = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
HEARTBEAT_INTERVAL_MS = 41_250
EPHEMERAL_FLAG = 1 << 6
LOADING_FLAG = 1 << 7

CREATE_INSTANT_INVITE = 1 << 0
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38

DEFAULT_MEMBER_PERMISSIONS = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
BOT_PERMISSIONS = DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES

ATTACHMENT_SIZE_LIMITS = {0: 10_485_760, 1: 10_485_760, 2: 52_428_800, 3: 104_857_600}

# Application command option types.
OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_STRING = 3
OPT_INTEGER = 4
OPT_BOOLEAN = 5
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_NUMBER = 10

# Interaction types.
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_MODAL_SUBMIT = 5

# Interaction callback types.
CALLBACK_PONG = 1
CALLBACK_MESSAGE = 4
CALLBACK_DEFERRED_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_AUTOCOMPLETE = 8
CALLBACK_MODAL = 9

MESSAGE_FIELDS = ("content", "embeds", "components", "flags", "allowed_mentions")

# Discord's limit of guilds on one session: past it an unsharded identify is closed with 4011.
MAX_GUILDS_PER_SESSION = 2500
CLOSE_INVALID_SHARD = 4010
CLOSE_SHARDING_REQUIRED = 4011


def shard_of(guild_id: int, shard_count: int) -> int:
    """Return the shard that receives a guild's events: (guild_id >> 22) % shard_count."""
    return (guild_id >> 22) % shard_count


def _now_iso() -> str:
    """Return the current UTC time as an ISO-8601 timestamp."""
    return datetime.now(UTC).isoformat()


def walk_components(components: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Yield every component in a component tree (rows, containers, sections, labels)."""
    for component in components:
        yield component
        children = component.get("components")
        if isinstance(children, list):
            yield from walk_components(children)
        for key in ("component", "accessory"):
            child = component.get(key)
            if isinstance(child, Mapping):
                yield from walk_components([child])


def find_button(message: FakeMessage, label: str) -> JSON:
    """Return the button in `message` whose label equals, or else contains, `label`."""
    buttons = [c for c in walk_components(message.components) if c.get("type") == 2]
    for button in buttons:
        if button.get("label") == label:
            return dict(button)
    for button in buttons:
        if label in str(button.get("label") or ""):
            return dict(button)
    labels = [b.get("label") for b in buttons]
    raise AssertionError(f"no button labelled {label!r} on message {message.id}; buttons: {labels}")


@dataclass
class FakeAttachment:
    """A file uploaded with a message."""

    filename: str
    content_type: str
    data: bytes
    id: int = 0
    url: str = ""
    description: str | None = None

    @property
    def size(self) -> int:
        """Return the attachment size in bytes."""
        return len(self.data)

    def to_payload(self) -> JSON:
        """Return the Discord attachment object."""
        payload: JSON = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            payload["description"] = self.description
        return payload


@dataclass
class FakeMessage:
    """A message stored by the fake."""

    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str = ""
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    message_reference: JSON | None = None
    allowed_mentions: JSON | None = None
    flags: int = 0
    deleted: bool = False
    edits: list[JSON] = field(default_factory=list)
    interaction_id: int | None = None
    author: JSON = field(default_factory=dict, repr=False)
    timestamp: str = field(default_factory=_now_iso, repr=False)
    edited_timestamp: str | None = field(default=None, repr=False)
    type: int = 0
    webhook_id: int | None = field(default=None, repr=False)
    interaction_metadata: JSON | None = field(default=None, repr=False)
    tts: bool = field(default=False, repr=False)

    @property
    def ephemeral(self) -> bool:
        """Return whether the message is ephemeral."""
        return bool(self.flags & EPHEMERAL_FLAG)

    def to_payload(self) -> JSON:
        """Return the Discord message object."""
        payload: JSON = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author or _user_payload(self.author_id, f"user{self.author_id}"),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "reactions": [],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
            payload["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = self.interaction_metadata
        return payload

    def button(self, label: str) -> JSON:
        """Return the button whose label equals, or else contains, `label`."""
        return find_button(self, label)

    def component(self, custom_id: str) -> JSON:
        """Return the component with the given custom_id."""
        for component in walk_components(self.components):
            if component.get("custom_id") == custom_id:
                return dict(component)
        ids = [c.get("custom_id") for c in walk_components(self.components) if "custom_id" in c]
        raise AssertionError(f"no component {custom_id!r} on message {self.id}; custom_ids: {ids}")


@dataclass
class FakeInteraction:
    """An interaction dispatched by the fake and everything the bot did in response."""

    id: int
    token: str
    type: int
    data: JSON
    guild_id: int | None
    channel_id: int
    user_id: int
    callbacks: list[JSON] = field(default_factory=list)
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    modal: JSON | None = None
    message_id: int | None = None
    payload: JSON = field(default_factory=dict, repr=False)
    # The [shard_id, shard_count] of every session the event was sent (or buffered) to.
    delivered_to: list[tuple[int, int]] = field(default_factory=list)

    @property
    def responded(self) -> bool:
        """Return whether an interaction callback was posted."""
        return bool(self.callbacks)

    @property
    def deferred(self) -> bool:
        """Return whether the interaction was acknowledged with a deferred callback."""
        return any(
            c.get("type") in (CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE)
            for c in self.callbacks
        )

    @property
    def ephemeral(self) -> bool:
        """Return whether the interaction's response is ephemeral."""
        if self.original is not None and self.original.interaction_id == self.id:
            return self.original.ephemeral
        return any(
            int((c.get("data") or {}).get("flags") or 0) & EPHEMERAL_FLAG for c in self.callbacks
        )


@dataclass
class RecordedRequest:
    """A REST request received by the fake."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[FakeAttachment] = field(default_factory=list)
    status: int = 0


@dataclass
class _Fault:
    """A scripted error answer for matching requests."""

    method: str
    pattern: re.Pattern[str]
    status: int
    body: JSON
    headers: dict[str, str]
    remaining: int


@dataclass
class _Member:
    """A guild member known to the fake."""

    user_id: int
    permissions: int
    role_ids: list[int]
    joined_at: str


@dataclass
class _Guild:
    """A guild known to the fake."""

    id: int
    name: str
    channel_ids: list[int]
    premium_tier: int
    owner_id: int
    bot_role_id: int
    members: dict[int, _Member] = field(default_factory=dict)
    roles: list[JSON] = field(default_factory=list)
    joined_at: str = field(default_factory=_now_iso)


@dataclass
class _Channel:
    """A channel known to the fake."""

    id: int
    type: int
    name: str
    guild_id: int | None = None
    position: int = 0
    recipient_id: int | None = None
    nsfw: bool = False  # age-restricted


@dataclass(eq=False)
class _Connection:
    """One websocket connection to the fake gateway."""

    ws: web.WebSocketResponse
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: bool = False

    async def send(self, payload: JSON) -> None:
        """Send one JSON text frame, ignoring a connection that is already closing."""
        async with self.lock:
            if not self.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.send_str(json.dumps(payload))


@dataclass(eq=False)
class _Session:
    """A gateway session that can be resumed; it receives the events of its shard's guilds."""

    id: str
    shard_id: int = 0
    shard_count: int = 1
    seq: int = 0
    events: list[JSON] = field(default_factory=list)
    conn: _Connection | None = None

    @property
    def shard(self) -> tuple[int, int]:
        """Return [shard_id, shard_count] as identified."""
        return (self.shard_id, self.shard_count)

    def receives(self, guild_id: int | None) -> bool:
        """Return whether this session gets a guild's events (no guild: DMs, shard 0 only)."""
        if guild_id is None:
            return self.shard_id == 0
        return shard_of(guild_id, self.shard_count) == self.shard_id

    @property
    def live(self) -> bool:
        """Return whether the session has an open, ready connection."""
        return self.conn is not None and not self.conn.ws.closed and self.conn.ready


@dataclass
class _Request:
    """A parsed incoming REST request."""

    raw: web.Request
    path: str
    query: dict[str, str]
    body: Any
    files: list[FakeAttachment]
    record: RecordedRequest


Handler = Callable[[_Request, re.Match[str]], Awaitable[web.StreamResponse]]


def _user_payload(user_id: int, name: str, *, bot: bool = False) -> JSON:
    """Return a Discord user object."""
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": None if bot else name,
        "avatar": None,
        "bot": bot,
        "system": False,
        "public_flags": 0,
        "avatar_decoration_data": None,
    }


def _json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return a JSON response whose Content-Type is exactly application/json (no charset)."""
    response = web.Response(
        status=status, body=json.dumps(data).encode(), headers=dict(headers or {})
    )
    response.content_type = "application/json"
    return response


def _error(status: int, message: str, code: int = 0) -> web.Response:
    """Return a Discord-style JSON error."""
    return _json_response({"message": message, "code": code}, status=status)


def _unknown_message() -> web.Response:
    """Return Discord's Unknown Message error."""
    return _error(404, "Unknown Message", 10008)


def _no_content() -> web.Response:
    """Return an empty 204 response."""
    return web.Response(status=204)


def _describe(predicate: Callable[..., Any]) -> str:
    """Return a short human-readable description of a predicate."""
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
    return source if len(source) < 300 else source[:300] + "..."


class FakeDiscord(LocalServer):
    """In-process fake Discord server (REST + gateway) for a real discord.py client."""

    def __init__(
        self,
        *,
        token: str = "test-discord-token",
        bot_user_id: int = 1000,
        application_id: int = 1000,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
    ) -> None:
        """Create the fake; call start() (or use `async with`) before connecting a client.

        `recommended_shards` and `max_concurrency` are what GET /gateway/bot answers.
        """
        super().__init__()
        self.recommended_shards = recommended_shards
        self.max_concurrency = max_concurrency
        self.max_guilds_per_session = MAX_GUILDS_PER_SESSION
        # (loop time, shard_id, shard_count) of every accepted IDENTIFY, in order.
        self.identifies: list[tuple[float, int, int]] = []
        self.token = token
        self.bot_user_id = bot_user_id
        self.application_id = application_id
        self.bot_name = "FakeBot"
        self.api_base = ""
        self.gateway_url = ""
        self.base_url = ""
        self.ready_count = 0
        self.resume_count = 0
        self._gateway_open = asyncio.Event()  # cleared: new connections hear nothing yet
        self._gateway_open.set()
        self.commands: dict[int | None, list[JSON]] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []
        self.gateway_received: list[JSON] = []
        self._guilds: dict[int, _Guild] = {}
        self._channels: dict[int, _Channel] = {}
        self._users: dict[int, str] = {bot_user_id: self.bot_name}
        self._dm_channels: dict[int, int] = {}
        self._closed_dms: set[int] = set()
        self._upload_limits: dict[int, int] = {}
        self._faults: list[_Fault] = []
        # Discord's global limit: requests a second per bot token (50 on Discord; None: off).
        # Interaction callbacks and webhooks are not bound by it, as on Discord.
        self.global_limit: int | None = None
        self.global_429s = 0
        self._bot_request_times: collections.deque[float] = collections.deque()
        self._sessions: dict[str, _Session] = {}
        self._latest: _Session | None = None  # the session identified last
        self._connections: set[_Connection] = set()
        self._changed = asyncio.Event()
        self._last_snowflake = 0
        self._counter = itertools.count()
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = self._build_routes()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening on a random free port on 127.0.0.1."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway_handler)
        app.router.add_get(
            "/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn_handler
        )
        app.router.add_route("*", "/{tail:.*}", self._rest_handler)
        await self.start_app(app)
        self.base_url = self.origin
        self.api_base = f"{self.base_url}{API_PREFIX}"
        self.gateway_url = f"ws://127.0.0.1:{self.port}/gateway"

    async def close(self) -> None:
        """Close every gateway connection and stop the server."""
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"fake shutting down"), 2)
        await super().close()

    # ------------------------------------------------------------------ world setup

    def add_guild(
        self,
        guild_id: int,
        *,
        name: str = "Guild",
        channel_ids: Sequence[int] = (),
        premium_tier: int = 0,
        owner_id: int = 1,
    ) -> None:
        """Add a guild (with text channels) that the bot is a member of."""
        guild = _Guild(
            id=guild_id,
            name=name,
            channel_ids=list(channel_ids),
            premium_tier=premium_tier,
            owner_id=owner_id,
            bot_role_id=self._snowflake(),
        )
        guild.roles = [
            self._role_payload(guild_id, "@everyone", DEFAULT_MEMBER_PERMISSIONS, position=0),
            {
                **self._role_payload(guild.bot_role_id, self.bot_name, BOT_PERMISSIONS, position=1),
                "managed": True,
                "tags": {"bot_id": str(self.bot_user_id)},
            },
        ]
        guild.members[self.bot_user_id] = _Member(
            self.bot_user_id, BOT_PERMISSIONS, [guild.bot_role_id], _now_iso()
        )
        for position, channel_id in enumerate(guild.channel_ids):
            self._channels[channel_id] = _Channel(
                id=channel_id,
                type=0,
                name=f"channel-{position}",
                guild_id=guild_id,
                position=position,
            )
        self._guilds[guild_id] = guild
        self._notify()

    def add_member(
        self,
        guild_id: int,
        user_id: int,
        *,
        name: str | None = None,
        permissions: int = DEFAULT_MEMBER_PERMISSIONS,
    ) -> None:
        """Add a member to a guild; non-default permissions are granted through a personal role."""
        guild = self._guilds[guild_id]
        self._users[user_id] = name or self._users.get(user_id) or f"user{user_id}"
        role_ids: list[int] = []
        if permissions != DEFAULT_MEMBER_PERMISSIONS:
            role_id = self._snowflake()
            guild.roles.append(
                self._role_payload(
                    role_id, f"perms-{user_id}", permissions, position=len(guild.roles)
                )
            )
            role_ids.append(role_id)
        guild.members[user_id] = _Member(user_id, permissions, role_ids, _now_iso())
        self._notify()

    async def add_channel(self, guild_id: int, channel_id: int, *, nsfw: bool = False) -> None:
        """Create a text channel in a guild (age-restricted if `nsfw`); the client is told."""
        guild = self._guilds[guild_id]
        channel = _Channel(
            id=channel_id,
            type=0,
            name=f"channel-{len(guild.channel_ids)}",
            guild_id=guild_id,
            position=len(guild.channel_ids),
            nsfw=nsfw,
        )
        self._channels[channel_id] = channel
        guild.channel_ids.append(channel_id)
        await self._dispatch("CHANNEL_CREATE", self._channel_payload(channel), guild_id=guild_id)

    async def delete_channel(self, channel_id: int) -> None:
        """Delete a guild channel: the client is told, and every later request gets 10003."""
        channel = self._channels.pop(channel_id)
        if channel.guild_id is not None:
            self._guilds[channel.guild_id].channel_ids.remove(channel_id)
        await self._dispatch(
            "CHANNEL_DELETE", self._channel_payload(channel), guild_id=channel.guild_id
        )

    def set_upload_limit(self, guild_id: int, limit: int) -> None:
        """Give a guild another attachment size limit (sent with interactions, enforced)."""
        self._upload_limits[guild_id] = limit

    def close_dms(self, user_id: int) -> None:
        """Make a user refuse direct messages (403, code 50007), as the privacy setting does."""
        self._closed_dms.add(user_id)

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int,
        body: Mapping[str, object],
        headers: Mapping[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests matching method and path (re.search) with `body`."""
        fault_headers = dict(headers or {})
        if status == 429 and "Via" not in fault_headers:
            # discord.py treats a 429 without a Via header as a Cloudflare ban and does not retry.
            fault_headers["Via"] = "1.1 google"
        self._faults.append(
            _Fault(
                method.upper(), re.compile(path_pattern), status, dict(body), fault_headers, times
            )
        )

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        """Wake everyone waiting in wait_for()."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], T | bool | None], timeout: float = 10) -> T:
        """Return the first truthy value of `predicate`, re-evaluated on every state change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value  # type: ignore[return-value]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(self._timeout_report(predicate, value, timeout))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _timeout_report(self, predicate: Callable[..., Any], value: object, timeout: float) -> str:
        """Describe the fake's state for a wait_for timeout."""
        recent = "\n".join(
            f"    {r.method} {r.path} -> {r.status} {json.dumps(r.json)[:200] if r.json else ''}"
            for r in self.requests[-10:]
        )
        return (
            f"wait_for timed out after {timeout}s; last value {value!r}\n"
            f"  predicate: {_describe(predicate)}\n"
            f"  ready_count={self.ready_count} connected shards={self.connected_shards()}\n"
            f"  unknown routes: {[(r.method, r.path) for r in self.unknown_routes]}\n"
            f"  last requests:\n{recent or '    (none)'}"
        )

    def connected_shards(self) -> list[tuple[int, int]]:
        """Return [shard_id, shard_count] of every session with a ready, open connection."""
        return sorted(session.shard for session in self._sessions.values() if session.live)

    def _shards_ready(self, shard_ids: Iterable[int] | None) -> bool:
        """Return whether each shard (default: all of the last identify's count) is live."""
        latest = self._latest
        if latest is None:
            return False
        wanted = set(range(latest.shard_count) if shard_ids is None else shard_ids)
        live = {
            session.shard_id
            for session in self._sessions.values()
            if session.live and session.shard_count == latest.shard_count
        }
        return wanted <= live

    async def wait_until_ready(
        self, timeout: float = 15, *, shard_ids: Iterable[int] | None = None
    ) -> None:
        """Wait until every shard has identified (or resumed) and received its GUILD_CREATEs.

        Without `shard_ids`, every shard of the count the last IDENTIFY named (one, unsharded).
        """
        await self.wait_for(lambda: self._shards_ready(shard_ids), timeout)

    # ------------------------------------------------------------------ queries

    def channel_messages(self, channel_id: int) -> list[FakeMessage]:
        """Return the channel's visible (non-deleted, non-ephemeral) messages, oldest first."""
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and not m.deleted and not m.ephemeral
        ]

    def dm_messages(self, user_id: int) -> list[FakeMessage]:
        """Return the messages the bot sent a user directly, oldest first."""
        channel_id = self._dm_channels.get(user_id)
        return [] if channel_id is None else self.channel_messages(channel_id)

    # ------------------------------------------------------------------ interactions

    async def invoke_command(
        self,
        name: str,
        options: Mapping[str, object] | None = None,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
    ) -> FakeInteraction:
        """Dispatch a slash command (`name` may be "group sub") as INTERACTION_CREATE."""
        root, *sub_names = name.split()
        command = next((c for c in self.commands.get(guild_id, []) if c["name"] == root), None)
        if command is None:
            command = next((c for c in self.commands.get(None, []) if c["name"] == root), None)
        if command is None:
            registered = {g: [c["name"] for c in cmds] for g, cmds in self.commands.items()}
            raise AssertionError(
                f"command {root!r} is not registered for guild {guild_id}: {registered}"
            )
        resolved: dict[str, dict[str, JSON]] = {}
        option_specs: list[JSON] = command.get("options") or []
        wrappers: list[JSON] = []
        for sub in sub_names:
            spec = next((o for o in option_specs if o["name"] == sub), None)
            if spec is None or spec["type"] not in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP):
                raise AssertionError(f"{name!r}: no subcommand {sub!r}")
            wrappers.append({"name": sub, "type": spec["type"], "options": []})
            option_specs = spec.get("options") or []
        built = [
            self._build_option(spec_name, value, option_specs, guild_id, resolved)
            for spec_name, value in (options or {}).items()
        ]
        for spec in option_specs:
            if spec.get("required") and spec["name"] not in (options or {}):
                raise AssertionError(f"{name!r}: missing required option {spec['name']!r}")
        leaf = built
        for wrapper in reversed(wrappers):
            wrapper["options"] = leaf
            leaf = [wrapper]
        data: JSON = {
            "id": command["id"],
            "name": root,
            "type": command.get("type", 1),
            "options": leaf,
        }
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return await self._dispatch_interaction(
            INTERACTION_APPLICATION_COMMAND,
            data,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
        )

    def _build_option(
        self,
        option_name: str,
        value: object,
        specs: Sequence[JSON],
        guild_id: int,
        resolved: dict[str, dict[str, JSON]],
    ) -> JSON:
        """Return one typed command option, filling `resolved` for users, channels and roles."""
        spec = next((s for s in specs if s["name"] == option_name), None)
        if spec is None:
            raise AssertionError(
                f"unknown option {option_name!r}; known: {[s['name'] for s in specs]}"
            )
        option_type = int(spec["type"])
        typed: object
        if option_type == OPT_INTEGER:
            typed = int(value)  # type: ignore[call-overload]
        elif option_type == OPT_NUMBER:
            typed = float(value)  # type: ignore[arg-type]
        elif option_type == OPT_BOOLEAN:
            typed = bool(value)
        elif option_type == OPT_USER:
            user_id = int(value)  # type: ignore[call-overload]
            typed = str(user_id)
            resolved.setdefault("users", {})[typed] = self._user(user_id)
            member = self._guilds[guild_id].members.get(user_id)
            if member is not None:
                member_payload = self._member_payload(guild_id, member)
                member_payload.pop("user")
                resolved.setdefault("members", {})[typed] = member_payload
        elif option_type == OPT_CHANNEL:
            typed = str(int(value))  # type: ignore[call-overload]
            channel = self._channels.get(int(typed))
            if channel is not None:
                resolved.setdefault("channels", {})[typed] = {
                    **self._channel_payload(channel),
                    "permissions": str(BOT_PERMISSIONS),
                }
        elif option_type == OPT_ROLE:
            typed = str(int(value))  # type: ignore[call-overload]
            role = next((r for r in self._guilds[guild_id].roles if r["id"] == typed), None)
            if role is not None:
                resolved.setdefault("roles", {})[typed] = role
        else:
            typed = str(value)
        choices = spec.get("choices")
        if choices and typed not in [c["value"] for c in choices]:
            raise AssertionError(
                f"option {option_name!r}: {typed!r} is not one of the choices {choices}"
            )
        return {"name": option_name, "type": option_type, "value": typed}

    async def click(
        self,
        message: FakeMessage,
        custom_id: str,
        *,
        user_id: int,
        values: Sequence[str] | None = None,
    ) -> FakeInteraction:
        """Dispatch a MESSAGE_COMPONENT interaction for a component on `message`."""
        current = self.messages.get(message.id, message)
        component = current.component(custom_id)
        if component.get("disabled"):
            raise AssertionError(f"component {custom_id!r} on message {message.id} is disabled")
        component_type = int(component.get("type", 2))
        data: JSON = {"custom_id": custom_id, "component_type": component_type}
        if component_type != 2:
            data["values"] = list(values or [])
        guild_id = current.guild_id
        if guild_id is None and current.channel_id in self._channels:
            guild_id = self._channels[current.channel_id].guild_id
        return await self._dispatch_interaction(
            INTERACTION_MESSAGE_COMPONENT,
            data,
            guild_id=guild_id,
            channel_id=current.channel_id,
            user_id=user_id,
            message=current,
        )

    async def submit_modal(
        self,
        interaction: FakeInteraction,
        values: Mapping[str, str | Sequence[str]],
        *,
        user_id: int | None = None,
    ) -> FakeInteraction:
        """Dispatch a MODAL_SUBMIT for the modal opened by `interaction`'s type 9 callback."""
        modal = interaction.modal
        if modal is None:
            raise AssertionError(
                f"interaction {interaction.id} did not open a modal: {interaction.callbacks}"
            )
        known = {
            c["custom_id"] for c in walk_components(modal.get("components", [])) if "custom_id" in c
        }
        unknown = set(values) - known
        if unknown:
            raise AssertionError(
                f"modal {modal.get('custom_id')!r} has no inputs {unknown}; inputs: {known}"
            )
        components = [self._submitted_component(c, values) for c in modal.get("components", [])]
        message = self.messages.get(interaction.message_id) if interaction.message_id else None
        return await self._dispatch_interaction(
            INTERACTION_MODAL_SUBMIT,
            {"custom_id": modal["custom_id"], "components": components},
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user_id if user_id is None else user_id,
            message=message,
        )

    def _submitted_component(self, component: Mapping[str, Any], values: Mapping[str, Any]) -> JSON:
        """Mirror one modal component as Discord submits it, with the entered values."""
        ctype = component.get("type")
        result: JSON = {"type": ctype}
        if "id" in component:
            result["id"] = component["id"]
        if ctype == 1:
            result["components"] = [
                self._submitted_component(c, values) for c in component["components"]
            ]
            return result
        if ctype == 18:
            result["component"] = self._submitted_component(component["component"], values)
            return result
        custom_id = component.get("custom_id")
        if custom_id is None:
            return result
        result["custom_id"] = custom_id
        if ctype == 4:
            value = values.get(custom_id, component.get("value") or "")
            if not isinstance(value, str):
                raise AssertionError(
                    f"text input {custom_id!r} needs a string value, got {value!r}"
                )
            if component.get("required", True) and not value:
                raise AssertionError(f"required text input {custom_id!r} was left empty")
            if value and len(value) < int(component.get("min_length") or 0):
                raise AssertionError(
                    f"text input {custom_id!r}: {value!r} is shorter than min_length"
                )
            if len(value) > int(component.get("max_length") or 4000):
                raise AssertionError(f"text input {custom_id!r}: value is longer than max_length")
            result["value"] = value
        else:
            raw = values.get(custom_id, [])
            result["values"] = [raw] if isinstance(raw, str) else list(raw)
        return result

    async def _dispatch_interaction(
        self,
        interaction_type: int,
        data: JSON,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        message: FakeMessage | None = None,
    ) -> FakeInteraction:
        """Build, record and dispatch an INTERACTION_CREATE event."""
        if not any(session.receives(guild_id) for session in self._sessions.values()):
            raise AssertionError(
                f"no gateway session receives guild {guild_id}: start the bot (with its shard) "
                "and await wait_until_ready() first"
            )
        interaction_id = self._snowflake()
        token = f"aW50ZXJhY3Rpb246{interaction_id}:{secrets.token_urlsafe(48)}"
        channel = self._channels.get(channel_id)
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "data": data,
            "channel_id": str(channel_id),
            "token": token,
            "version": 1,
            "app_permissions": str(BOT_PERMISSIONS),
            "locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "context": 0 if guild_id is not None else 1,
            "attachment_size_limit": self._size_limit(guild_id),
        }
        if channel is not None:
            payload["channel"] = self._channel_payload(channel)
        if guild_id is not None:
            guild = self._guilds.get(guild_id)
            if guild is None:
                raise AssertionError(f"unknown guild {guild_id}; call add_guild() first")
            member = guild.members.get(user_id)
            if member is None:
                self._users.setdefault(user_id, f"user{user_id}")
                member = _Member(user_id, DEFAULT_MEMBER_PERMISSIONS, [], _now_iso())
            payload["guild_id"] = str(guild_id)
            payload["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            payload["member"] = self._member_payload(guild_id, member, with_permissions=True)
            payload["authorizing_integration_owners"] = {"0": str(guild_id)}
        else:
            payload["user"] = self._user(user_id)
            payload["authorizing_integration_owners"] = {"0": str(user_id)}
        if message is not None:
            payload["message"] = message.to_payload()
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            type=interaction_type,
            data=data,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            message_id=message.id if message is not None else None,
            payload=payload,
        )
        self.interactions[interaction_id] = interaction
        interaction.delivered_to = await self._dispatch(
            "INTERACTION_CREATE", payload, guild_id=guild_id
        )
        return interaction

    # ------------------------------------------------------------------ gateway

    def hold_gateway(self) -> None:
        """Leave new gateway connections without a HELLO (an outage) until `release_gateway`."""
        self._gateway_open.clear()

    def release_gateway(self) -> None:
        """Let held and new gateway connections go on as usual."""
        self._gateway_open.set()

    async def disconnect_gateway(self, *, shard_id: int | None = None) -> None:
        """Close open gateway connections (or one shard's) with 4000 so that clients resume."""
        for session in list(self._sessions.values()):
            conn = session.conn
            if conn is None or (shard_id is not None and session.shard_id != shard_id):
                continue
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=4000, message=b"fake disconnect"), 5)
        self._notify()

    async def _dispatch(
        self, event: str, data: JSON, *, guild_id: int | None = None
    ) -> list[tuple[int, int]]:
        """Send an event to every session of the guild's shard (no guild: shard 0).

        Return the sessions' [shard_id, shard_count]; a disconnected one buffers for resume.
        """
        targets = [s for s in self._sessions.values() if s.receives(guild_id)]
        for session in targets:
            await self._send_event(session, event, data)
        self._notify()
        return [session.shard for session in targets]

    async def _send_event(self, session: _Session, event: str, data: JSON) -> None:
        """Send one DISPATCH on a session (buffered for resume while it is disconnected)."""
        session.seq += 1
        payload: JSON = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(payload)
        if session.conn is not None:
            await session.conn.send(payload)

    async def _gateway_handler(self, request: web.Request) -> web.StreamResponse:
        """Serve one gateway websocket connection (silent while the gateway is held)."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await self._gateway_open.wait()
        conn = _Connection(ws)
        self._connections.add(conn)
        try:
            await conn.send(
                {"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}}
            )
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_gateway_message(conn, json.loads(msg.data))
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            self._connections.discard(conn)
            for session in self._sessions.values():
                if session.conn is conn:
                    session.conn = None
            self._notify()
        return ws

    async def _on_gateway_message(self, conn: _Connection, message: JSON) -> None:
        """Handle one opcode sent by the client."""
        self.gateway_received.append(message)
        op = message.get("op")
        data = message.get("d")
        if op == 1:
            await conn.send({"op": 11, "s": None, "t": None, "d": None})
        elif op == 2:
            await self._identify(conn, data or {})
        elif op == 6:
            await self._resume(conn, data or {})
        self._notify()

    async def _identify(self, conn: _Connection, data: JSON) -> None:
        """Start a new session: READY followed by one GUILD_CREATE per guild of its shard.

        As on Discord, a second session with the same `shard` does not replace the first:
        both receive that shard's events.
        """
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        shard = data.get("shard", [0, 1])
        if (
            not isinstance(shard, list)
            or len(shard) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in shard)
            or not 0 <= shard[0] < shard[1]
        ):
            await conn.ws.close(code=CLOSE_INVALID_SHARD, message=b"Invalid shard.")
            return
        session = _Session(id=secrets.token_hex(16), shard_id=shard[0], shard_count=shard[1])
        guilds = [g for g in self._guilds.values() if session.receives(g.id)]
        if len(guilds) > self.max_guilds_per_session:
            await conn.ws.close(code=CLOSE_SHARDING_REQUIRED, message=b"Sharding required.")
            return
        self._sessions[session.id] = session
        self._latest = session
        self.identifies.append((asyncio.get_running_loop().time(), shard[0], shard[1]))
        ready: JSON = {
            "v": 10,
            "user": {
                **self._user(self.bot_user_id, bot=True),
                "verified": True,
                "mfa_enabled": False,
                "flags": 0,
                "email": None,
                "locale": "en-US",
            },
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fake-discord"],
        }
        if "shard" in data:
            ready["shard"] = list(shard)
        session.conn = conn
        await self._send_event(session, "READY", ready)
        for guild in guilds:
            await self._send_event(session, "GUILD_CREATE", self._guild_create_payload(guild))
        conn.ready = True
        self.ready_count += 1
        self._notify()

    async def _resume(self, conn: _Connection, data: JSON) -> None:
        """Resume a known session, replaying missed events, or invalidate it."""
        session = self._sessions.get(str(data.get("session_id")))
        if data.get("token") != self.token or session is None:
            await conn.send({"op": 9, "s": None, "t": None, "d": False})
            return
        last_seq = int(data.get("seq") or 0)
        session.conn = conn
        for payload in session.events:
            if payload["s"] > last_seq:
                await conn.send(payload)
        await self._send_event(session, "RESUMED", {"_trace": ["fake-discord"]})
        conn.ready = True
        self.resume_count += 1
        self._notify()

    # ------------------------------------------------------------------ payload builders

    def _snowflake(self) -> int:
        """Return a new, strictly increasing, realistic snowflake."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        candidate = (ms << 22) | (1 << 17) | (next(self._counter) & 0xFFF)
        self._last_snowflake = max(candidate, self._last_snowflake + 1)
        return self._last_snowflake

    def _user(self, user_id: int, *, bot: bool = False) -> JSON:
        """Return the user object for a known or ad-hoc user."""
        is_bot = bot or user_id == self.bot_user_id
        return _user_payload(user_id, self._users.get(user_id, f"user{user_id}"), bot=is_bot)

    @staticmethod
    def _role_payload(role_id: int, name: str, permissions: int, *, position: int) -> JSON:
        """Return a role object."""
        return {
            "id": str(role_id),
            "name": name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": str(permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def _member_payload(
        self, guild_id: int, member: _Member, *, with_permissions: bool = False
    ) -> JSON:
        """Return a guild member object."""
        payload: JSON = {
            "user": self._user(member.user_id),
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in member.role_ids],
            "joined_at": member.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_permissions:
            guild = self._guilds[guild_id]
            permissions = member.permissions
            if member.user_id == guild.owner_id:
                permissions |= 1 << 3  # administrator
            payload["permissions"] = str(permissions)
        return payload

    def _channel_payload(self, channel: _Channel) -> JSON:
        """Return a channel object."""
        if channel.type == 1:
            recipient = channel.recipient_id or 0
            return {
                "id": str(channel.id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self._user(recipient)],
            }
        return {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": [],
            "nsfw": channel.nsfw,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }

    def _guild_create_payload(self, guild: _Guild) -> JSON:
        """Return the GUILD_CREATE payload for a guild."""
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "widget_enabled": False,
            "application_id": None,
            "max_members": 500_000,
            "max_video_channel_users": 25,
            "joined_at": guild.joined_at,
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(guild.members),
            "features": [],
            "roles": guild.roles,
            "emojis": [],
            "stickers": [],
            "channels": [self._channel_payload(self._channels[c]) for c in guild.channel_ids],
            "threads": [],
            "members": [self._member_payload(guild.id, m) for m in guild.members.values()],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _size_limit(self, guild_id: int | None) -> int:
        """Return the attachment size limit for a guild (or DMs)."""
        if guild_id in self._upload_limits:
            return self._upload_limits[guild_id]
        guild = self._guilds.get(guild_id) if guild_id is not None else None
        return ATTACHMENT_SIZE_LIMITS.get(
            guild.premium_tier if guild else 0, ATTACHMENT_SIZE_LIMITS[0]
        )

    # ------------------------------------------------------------------ REST plumbing

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler, bool]]:
        """Return (method, path regex, handler, needs bot auth) for every implemented route."""
        snowflake = r"(?P<{}>\d+)"
        token = r"(?P<token>[^/]+)"
        msg_id = snowflake.format("message_id")
        channel = snowflake.format("channel_id")
        app = snowflake.format("app_id")
        guild = snowflake.format("guild_id")
        webhook = rf"/webhooks/{app}/{token}"
        table: list[tuple[str, str, Handler, bool]] = [
            ("GET", r"/users/@me", self._get_me, True),
            ("GET", r"/oauth2/applications/@me", self._get_application, True),
            ("GET", r"/gateway", self._get_gateway, False),
            ("GET", r"/gateway/bot", self._get_gateway, True),
            ("GET", rf"/applications/{app}/commands", self._get_commands, True),
            ("PUT", rf"/applications/{app}/commands", self._put_commands, True),
            ("GET", rf"/applications/{app}/guilds/{guild}/commands", self._get_commands, True),
            ("PUT", rf"/applications/{app}/guilds/{guild}/commands", self._put_commands, True),
            (
                "POST",
                rf"/interactions/{snowflake.format('interaction_id')}/{token}/callback",
                self._post_callback,
                False,
            ),
            (
                "GET",
                rf"{webhook}/messages/(?P<which>@original|\d+)",
                self._get_webhook_message,
                False,
            ),
            (
                "PATCH",
                rf"{webhook}/messages/(?P<which>@original|\d+)",
                self._patch_webhook_message,
                False,
            ),
            (
                "DELETE",
                rf"{webhook}/messages/(?P<which>@original|\d+)",
                self._delete_webhook_message,
                False,
            ),
            ("POST", webhook, self._post_followup, False),
            ("GET", rf"/channels/{channel}", self._get_channel, True),
            ("POST", rf"/channels/{channel}/typing", self._post_typing, True),
            ("GET", rf"/channels/{channel}/messages", self._list_messages, True),
            ("POST", rf"/channels/{channel}/messages", self._post_message, True),
            ("GET", rf"/channels/{channel}/messages/{msg_id}", self._get_message, True),
            ("PATCH", rf"/channels/{channel}/messages/{msg_id}", self._patch_message, True),
            ("DELETE", rf"/channels/{channel}/messages/{msg_id}", self._delete_message, True),
            ("POST", r"/users/@me/channels", self._create_dm, True),
        ]
        return [
            (method, re.compile(pattern), handler, auth) for method, pattern, handler, auth in table
        ]

    async def _rest_handler(self, request: web.Request) -> web.StreamResponse:
        """Record, authorize, fault-inject and route one REST request."""
        full_path = request.path
        path = full_path[len(API_PREFIX) :] if full_path.startswith(API_PREFIX + "/") else full_path
        parsed = await self._parse_request(request, path)
        self.requests.append(parsed.record)
        try:
            response = await self._route(parsed, api=full_path.startswith(API_PREFIX + "/"))
        except Exception:
            parsed.record.status = 500
            self._notify()
            raise
        parsed.record.status = response.status
        self._notify()
        return response

    async def _route(self, req: _Request, *, api: bool) -> web.StreamResponse:
        """Dispatch a parsed request to its handler."""
        for fault in self._faults:
            if fault.method == req.raw.method and fault.pattern.search(req.path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return _json_response(fault.body, status=fault.status, headers=fault.headers)
        if api:
            for method, pattern, handler, needs_auth in self._routes:
                match = pattern.fullmatch(req.path)
                if match is None or method != req.raw.method:
                    continue
                if needs_auth and req.raw.headers.get("Authorization") != f"Bot {self.token}":
                    return _error(401, "401: Unauthorized")
                if needs_auth and (throttled := self._over_global_limit()) is not None:
                    return throttled
                return await handler(req, match)
        self.unknown_routes.append(req.record)
        return _error(404, "404: Not Found")

    def _over_global_limit(self) -> web.Response | None:
        """A global 429 if this bot request is one too many for the last second, else None."""
        if self.global_limit is None:
            return None
        now = asyncio.get_running_loop().time()
        times = self._bot_request_times
        while times and times[0] <= now - 1.0:
            times.popleft()
        if len(times) < self.global_limit:
            times.append(now)
            return None
        self.global_429s += 1
        retry_after = round(max(0.001, times[0] + 1.0 - now), 3)
        return _json_response(
            {"message": "You are being rate limited.", "retry_after": retry_after, "global": True},
            status=429,
            headers={
                "Retry-After": str(retry_after),
                "X-RateLimit-Global": "true",
                "X-RateLimit-Scope": "global",
                "Via": "1.1 google",
            },
        )

    async def _parse_request(self, request: web.Request, path: str) -> _Request:
        """Parse the JSON or multipart body of a request."""
        body: Any = None
        files: list[FakeAttachment] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            part_files: dict[int, FakeAttachment] = {}
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                    continue
                data = bytes(await part.read())
                filename = part.filename or str(part.name)
                guessed = mimetypes.guess_type(filename)[0]
                content_type = guessed or part.headers.get(
                    "Content-Type", "application/octet-stream"
                )
                index_match = re.fullmatch(r"files\[(\d+)\]|file(\d*)", str(part.name))
                index = len(part_files)
                if index_match:
                    index = int(index_match.group(1) or index_match.group(2) or 0)
                part_files[index] = FakeAttachment(filename, content_type, data)
            files = [part_files[i] for i in sorted(part_files)]
            self._apply_attachment_metadata(body, files)
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        query = dict(request.query)
        record = RecordedRequest(request.method, path, query, body, files)
        return _Request(request, path, query, body, files, record)

    @staticmethod
    def _apply_attachment_metadata(body: Any, files: list[FakeAttachment]) -> None:
        """Copy filename/description from the payload's attachments list onto uploaded files."""
        if not isinstance(body, dict):
            return
        data = body.get("data") if isinstance(body.get("data"), dict) else body
        for attachment in (data or {}).get("attachments") or []:
            try:
                index = int(attachment.get("id"))
            except (TypeError, ValueError):
                continue
            if 0 <= index < len(files):
                files[index].filename = attachment.get("filename") or files[index].filename
                files[index].description = attachment.get("description")

    # ------------------------------------------------------------------ REST: identity & commands

    async def _get_me(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET /users/@me."""
        return _json_response(
            {
                **self._user(self.bot_user_id, bot=True),
                "verified": True,
                "mfa_enabled": False,
                "flags": 0,
            }
        )

    async def _get_application(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET /oauth2/applications/@me."""
        return _json_response(
            {
                "id": str(self.application_id),
                "name": self.bot_name,
                "icon": None,
                "description": "",
                "summary": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": self._user(self.bot_user_id, bot=True),
                "owner": self._user(1),
                "team": None,
                "verify_key": "0" * 64,
                "flags": 0,
                "tags": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "approximate_guild_count": len(self._guilds),
            }
        )

    async def _get_gateway(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET /gateway and /gateway/bot (the recommended shards and the session start limit)."""
        return _json_response(
            {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": max(0, 1000 - len(self.identifies)),
                    "reset_after": 0,
                    "max_concurrency": self.max_concurrency,
                },
            }
        )

    def _check_app(self, match: re.Match[str]) -> web.Response | None:
        """Return an error if the path's application id is not ours."""
        if int(match["app_id"]) != self.application_id:
            return _error(403, "Missing Access", 50001)
        return None

    async def _get_commands(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET global or guild commands."""
        if (error := self._check_app(match)) is not None:
            return error
        guild_id = int(match["guild_id"]) if match.groupdict().get("guild_id") else None
        return _json_response(self.commands.get(guild_id, []))

    async def _put_commands(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """PUT (bulk overwrite) global or guild commands, assigning ids."""
        if (error := self._check_app(match)) is not None:
            return error
        guild_id = int(match["guild_id"]) if match.groupdict().get("guild_id") else None
        if guild_id is not None and guild_id not in self._guilds:
            return _error(403, "Missing Access", 50001)
        if not isinstance(req.body, list):
            return _error(400, "Invalid Form Body", 50035)
        existing = {(c["name"], c.get("type", 1)): c for c in self.commands.get(guild_id, [])}
        stored: list[JSON] = []
        for command in req.body:
            previous = existing.get((command["name"], command.get("type", 1)))
            entry: JSON = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
                **command,
                "id": previous["id"] if previous else str(self._snowflake()),
                "application_id": str(self.application_id),
                "version": str(self._snowflake()),
            }
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        self.commands[guild_id] = stored
        return _json_response(stored)

    # ------------------------------------------------------------------ REST: interactions

    def _interaction_for(self, match: re.Match[str]) -> FakeInteraction | None:
        """Return the interaction addressed by a webhook path, if app id and token are valid."""
        if int(match["app_id"]) != self.application_id:
            return None
        return next((i for i in self.interactions.values() if i.token == match["token"]), None)

    async def _post_callback(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """POST /interactions/{id}/{token}/callback."""
        interaction = self.interactions.get(int(match["interaction_id"]))
        if interaction is None or interaction.token != match["token"]:
            return _error(404, "Unknown interaction", 10062)
        body = req.body if isinstance(req.body, dict) else {}
        callback_type = body.get("type")
        if interaction.callbacks:
            return _error(400, "Interaction has already been acknowledged.", 40060)
        data: JSON = body.get("data") or {}
        has_message = interaction.message_id is not None and interaction.message_id in self.messages
        if callback_type in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE) and not has_message:
            return _error(400, "Invalid Form Body: no message to update", 50035)
        if callback_type == CALLBACK_MODAL and interaction.type == INTERACTION_MODAL_SUBMIT:
            return _error(400, "Invalid Form Body: cannot respond to a modal with a modal", 50035)
        if callback_type not in (
            CALLBACK_PONG,
            CALLBACK_MESSAGE,
            CALLBACK_DEFERRED_MESSAGE,
            CALLBACK_DEFERRED_UPDATE,
            CALLBACK_UPDATE_MESSAGE,
            CALLBACK_AUTOCOMPLETE,
            CALLBACK_MODAL,
        ):
            return _error(400, "Invalid Form Body", 50035)
        message: FakeMessage | None = None
        if callback_type == CALLBACK_MESSAGE:
            if (
                error := self._check_message_body(data, req.files, interaction.guild_id)
            ) is not None:
                return error
            message = self._create_message(
                interaction.channel_id,
                interaction.guild_id,
                data,
                req.files,
                interaction=interaction,
            )
            interaction.original = message
        elif callback_type == CALLBACK_DEFERRED_MESSAGE:
            flags = int(data.get("flags") or 0) | LOADING_FLAG
            message = self._create_message(
                interaction.channel_id,
                interaction.guild_id,
                {"flags": flags},
                [],
                interaction=interaction,
            )
            interaction.original = message
        elif callback_type in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE):
            message = self.messages[interaction.message_id or 0]
            if callback_type == CALLBACK_UPDATE_MESSAGE:
                self._edit_message(message, data, req.files)
            interaction.original = message
        elif callback_type == CALLBACK_MODAL:
            interaction.modal = data
        interaction.callbacks.append(body)
        if req.query.get("with_response") not in ("1", "true", "True"):
            return _no_content()
        response: JSON = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_id": str(message.id) if message else None,
                "response_message_loading": callback_type == CALLBACK_DEFERRED_MESSAGE,
                "response_message_ephemeral": bool(message and message.ephemeral),
            }
        }
        if message is not None and callback_type != CALLBACK_DEFERRED_UPDATE:
            response["resource"] = {"type": callback_type, "message": message.to_payload()}
        return _json_response(response)

    def _webhook_target(self, interaction: FakeInteraction, which: str) -> FakeMessage | None:
        """Return the message addressed by @original or a message id for an interaction."""
        if which == "@original":
            target = interaction.original
        else:
            message_id = int(which)
            candidates = [
                *interaction.followups,
                *([interaction.original] if interaction.original else []),
            ]
            target = next((m for m in candidates if m.id == message_id), None)
        if target is None or target.deleted:
            return None
        return target

    async def _get_webhook_message(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET /webhooks/{app}/{token}/messages/{id|@original}."""
        interaction = self._interaction_for(match)
        if interaction is None:
            return _error(404, "Unknown Webhook", 10015)
        target = self._webhook_target(interaction, match["which"])
        return _json_response(target.to_payload()) if target else _unknown_message()

    async def _patch_webhook_message(
        self, req: _Request, match: re.Match[str]
    ) -> web.StreamResponse:
        """PATCH /webhooks/{app}/{token}/messages/{id|@original}."""
        interaction = self._interaction_for(match)
        if interaction is None:
            return _error(404, "Unknown Webhook", 10015)
        target = self._webhook_target(interaction, match["which"])
        if target is None:
            return _unknown_message()
        body = req.body if isinstance(req.body, dict) else {}
        if (error := self._check_files(req.files, interaction.guild_id)) is not None:
            return error
        self._edit_message(target, body, req.files)
        return _json_response(target.to_payload())

    async def _delete_webhook_message(
        self, req: _Request, match: re.Match[str]
    ) -> web.StreamResponse:
        """DELETE /webhooks/{app}/{token}/messages/{id|@original}."""
        interaction = self._interaction_for(match)
        if interaction is None:
            return _error(404, "Unknown Webhook", 10015)
        target = self._webhook_target(interaction, match["which"])
        if target is None:
            return _unknown_message()
        target.deleted = True
        return _no_content()

    async def _post_followup(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """POST /webhooks/{app}/{token} (interaction followup)."""
        interaction = self._interaction_for(match)
        if interaction is None or not interaction.callbacks:
            return _error(404, "Unknown Webhook", 10015)
        body = req.body if isinstance(req.body, dict) else {}
        if (error := self._check_message_body(body, req.files, interaction.guild_id)) is not None:
            return error
        message = self._create_message(
            interaction.channel_id, interaction.guild_id, body, req.files, interaction=interaction
        )
        interaction.followups.append(message)
        if req.query.get("wait") in ("1", "true", "True"):
            return _json_response(message.to_payload())
        return _no_content()

    # ------------------------------------------------------------------ REST: channels & messages

    def _channel_or_error(self, match: re.Match[str]) -> _Channel | web.Response:
        """Return the channel addressed by the path or an Unknown Channel error."""
        channel = self._channels.get(int(match["channel_id"]))
        return channel if channel is not None else _error(404, "Unknown Channel", 10003)

    def _message_or_error(self, match: re.Match[str]) -> FakeMessage | web.Response:
        """Return the live message addressed by the path or an Unknown Channel/Message error."""
        if int(match["channel_id"]) not in self._channels:
            return _error(404, "Unknown Channel", 10003)
        message = self.messages.get(int(match["message_id"]))
        if message is None or message.deleted or message.channel_id != int(match["channel_id"]):
            return _unknown_message()
        return message

    async def _get_channel(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET /channels/{id}."""
        channel = self._channel_or_error(match)
        if isinstance(channel, web.Response):
            return channel
        return _json_response(self._channel_payload(channel))

    async def _post_typing(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """POST /channels/{id}/typing."""
        channel = self._channel_or_error(match)
        return channel if isinstance(channel, web.Response) else _no_content()

    async def _list_messages(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET /channels/{id}/messages, newest first, honouring limit/before/after/around."""
        channel = self._channel_or_error(match)
        if isinstance(channel, web.Response):
            return channel
        visible = sorted(
            (m for m in self.channel_messages(channel.id)),
            key=lambda m: m.id,
        )
        limit = max(1, min(100, int(req.query.get("limit", "50"))))
        if "around" in req.query:
            around = int(req.query["around"])
            older = [m for m in visible if m.id <= around][-((limit + 1) // 2) :]
            newer = [m for m in visible if m.id > around][: limit - len(older)]
            selected = older + newer
        elif "after" in req.query:
            after = int(req.query["after"])
            selected = [m for m in visible if m.id > after][:limit]
        else:
            before = int(req.query.get("before", str(1 << 63)))
            selected = [m for m in visible if m.id < before][-limit:]
        return _json_response([m.to_payload() for m in reversed(selected)])

    async def _post_message(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """POST /channels/{id}/messages (JSON or multipart)."""
        channel = self._channel_or_error(match)
        if isinstance(channel, web.Response):
            return channel
        if channel.recipient_id in self._closed_dms:
            return _error(403, "Cannot send messages to this user", 50007)
        body = req.body if isinstance(req.body, dict) else {}
        if (error := self._check_message_body(body, req.files, channel.guild_id)) is not None:
            return error
        reference = body.get("message_reference")
        if reference and reference.get("message_id") and reference.get("fail_if_not_exists", True):
            referenced = self.messages.get(int(reference["message_id"]))
            if referenced is None or referenced.deleted:
                return _json_response(
                    {
                        "message": "Invalid Form Body",
                        "code": 50035,
                        "errors": {
                            "message_reference": {
                                "_errors": [
                                    {
                                        "code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                                        "message": "Unknown message",
                                    }
                                ]
                            }
                        },
                    },
                    status=400,
                )
        message = self._create_message(channel.id, channel.guild_id, body, req.files)
        return _json_response(message.to_payload())

    async def _get_message(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """GET /channels/{id}/messages/{id}."""
        message = self._message_or_error(match)
        if isinstance(message, web.Response):
            return message
        return _json_response(message.to_payload())

    async def _patch_message(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """PATCH /channels/{id}/messages/{id} (JSON or multipart)."""
        message = self._message_or_error(match)
        if isinstance(message, web.Response):
            return message
        if (error := self._check_files(req.files, message.guild_id)) is not None:
            return error
        self._edit_message(message, req.body if isinstance(req.body, dict) else {}, req.files)
        return _json_response(message.to_payload())

    async def _delete_message(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """DELETE /channels/{id}/messages/{id}."""
        message = self._message_or_error(match)
        if isinstance(message, web.Response):
            return message
        message.deleted = True
        return _no_content()

    async def _create_dm(self, req: _Request, match: re.Match[str]) -> web.StreamResponse:
        """POST /users/@me/channels: open (or reuse) a DM channel."""
        body = req.body if isinstance(req.body, dict) else {}
        try:
            recipient_id = int(body["recipient_id"])
        except (KeyError, TypeError, ValueError):
            return _error(400, "Invalid Form Body", 50035)
        channel_id = self._dm_channels.get(recipient_id)
        if channel_id is None:
            channel_id = self._snowflake()
            self._dm_channels[recipient_id] = channel_id
            self._channels[channel_id] = _Channel(
                id=channel_id, type=1, name="", recipient_id=recipient_id
            )
        return _json_response(self._channel_payload(self._channels[channel_id]))

    async def _cdn_handler(self, request: web.Request) -> web.StreamResponse:
        """Serve uploaded attachment bytes (what Attachment.read() fetches)."""
        attachment_id = int(request.match_info["attachment_id"])
        for message in self.messages.values():
            for attachment in message.attachments:
                if attachment.id == attachment_id:
                    return web.Response(body=attachment.data, content_type=attachment.content_type)
        return web.Response(status=404)

    # ------------------------------------------------------------------ message helpers

    def _check_files(
        self, files: Sequence[FakeAttachment], guild_id: int | None
    ) -> web.Response | None:
        """Return a 413 error if uploads exceed the attachment size limit."""
        if sum(f.size for f in files) > self._size_limit(guild_id):
            return _error(413, "Request entity too large", 40005)
        return None

    def _check_message_body(
        self, body: Mapping[str, Any], files: Sequence[FakeAttachment], guild_id: int | None
    ) -> web.Response | None:
        """Return an error for an empty or oversized message."""
        if (error := self._check_files(files, guild_id)) is not None:
            return error
        if (
            not any(body.get(k) for k in ("content", "embeds", "components", "sticker_ids", "poll"))
            and not files
        ):
            return _error(400, "Cannot send an empty message", 50006)
        if len(body.get("content") or "") > 2000:
            return _error(400, "Invalid Form Body: content must be 2000 or fewer in length", 50035)
        return None

    def _store_files(
        self, channel_id: int, files: Sequence[FakeAttachment]
    ) -> list[FakeAttachment]:
        """Assign ids and CDN URLs to uploaded files."""
        for attachment in files:
            attachment.id = self._snowflake()
            attachment.url = (
                f"{self.base_url}/attachments/{channel_id}/{attachment.id}/{attachment.filename}"
            )
        return list(files)

    def _create_message(
        self,
        channel_id: int,
        guild_id: int | None,
        body: Mapping[str, Any],
        files: Sequence[FakeAttachment],
        *,
        interaction: FakeInteraction | None = None,
    ) -> FakeMessage:
        """Create and store a message authored by the bot."""
        reference = body.get("message_reference")
        if reference is not None:
            reference = {"channel_id": str(channel_id), **reference}
            if guild_id is not None:
                reference.setdefault("guild_id", str(guild_id))
        message_type = 19 if reference else 0
        message = FakeMessage(
            id=self._snowflake(),
            channel_id=channel_id,
            guild_id=guild_id,
            author_id=self.bot_user_id,
            content=body.get("content") or "",
            embeds=list(body.get("embeds") or []),
            components=list(body.get("components") or []),
            attachments=self._store_files(channel_id, files),
            message_reference=reference,
            allowed_mentions=body.get("allowed_mentions"),
            flags=int(body.get("flags") or 0),
            author=self._user(self.bot_user_id, bot=True),
            type=message_type,
            tts=bool(body.get("tts")),
        )
        if interaction is not None:
            message.interaction_id = interaction.id
            message.webhook_id = self.application_id
            if interaction.type == INTERACTION_APPLICATION_COMMAND and not reference:
                message.type = 20
            message.interaction_metadata = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": self._user(interaction.user_id),
                "authorizing_integration_owners": interaction.payload.get(
                    "authorizing_integration_owners", {}
                ),
            }
        self.messages[message.id] = message
        return message

    def _edit_message(
        self, message: FakeMessage, body: Mapping[str, Any], files: Sequence[FakeAttachment]
    ) -> None:
        """Apply a PATCH body (and any new uploads) to a message."""
        message.edits.append(dict(body))
        if "content" in body:
            message.content = body["content"] or ""
        if "embeds" in body:
            message.embeds = list(body["embeds"] or [])
        if "components" in body:
            message.components = list(body["components"] or [])
        if "allowed_mentions" in body:
            message.allowed_mentions = body["allowed_mentions"]
        if "flags" in body and body["flags"] is not None:
            message.flags = int(body["flags"]) | (message.flags & EPHEMERAL_FLAG)
        message.flags &= ~LOADING_FLAG
        if "attachments" in body:
            keep = {str(a.get("id")) for a in body["attachments"] or []}
            message.attachments = [a for a in message.attachments if str(a.id) in keep]
        message.attachments.extend(self._store_files(message.channel_id, files))
        message.edited_timestamp = _now_iso()
