"""Settings read from the environment and from `.env` in the working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yarl
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.backends.cog.config import parse_cog_urls
from bot.backends.output_hosts import DEFAULT_OUTPUT_PREFIXES, OutputPrefix, parse_output_prefixes
from bot.core.jobs import (
    CHECKPOINTS,
    DEFAULT_CHECKPOINT,
    DEFAULT_GUIDANCE,
    DEFAULT_MOTION_MODULE,
    DEFAULT_STEPS,
    MAX_GUIDANCE,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    MOTION_MODULES,
)
from bot.owner.guild_settings import GuildSettings
from bot.storage.leases import JOB_LEASE_SECONDS
from bot.storage.postgres import url_problem as postgres_url_problem

DEFAULT_MODEL_VERSION = "beecf59c4aee8d81bf04f0381033dfa10dc16e845b4ae00d281e2fa377e48a9f"


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line meant for the operator."""


class Settings(BaseSettings):
    """Every knob of the bot; names match the environment variables in upper case."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    discord_token: SecretStr
    replicate_api_token: SecretStr | None = None  # required unless COG_URLS is set
    replicate_api_base: str = "https://api.replicate.com/v1"
    replicate_model_version: str = DEFAULT_MODEL_VERSION
    database_path: Path = Path("data/animate-bot.sqlite3")
    discord_guild_ids: Annotated[tuple[int, ...], NoDecode] = ()
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str | None = None
    log_level: str = "INFO"

    # The store: a postgresql:// URL to share one database between processes; empty: SQLite.
    database_url: SecretStr | None = None

    # Sharding: total shards (None: one; "auto": Discord's recommendation) and this process's.
    shard_count: Annotated[int | Literal["auto"] | None, NoDecode] = None
    shard_ids: Annotated[tuple[int, ...], NoDecode] = ()
    # With DATABASE_URL: how long a process's claim on a job lasts unless renewed; a job whose
    # process died is taken over by another once it expires.
    job_lease_seconds: float = Field(default=JOB_LEASE_SECONDS, ge=3, le=600)

    max_running_per_guild: int = Field(default=1, ge=1, le=50)
    max_running_total: int = Field(default=4, ge=1, le=500)
    max_queued_per_member: int = Field(default=3, ge=1, le=100)
    prediction_wait_seconds: int = Field(default=60, ge=1, le=60)
    prediction_timeout_seconds: float = Field(default=1800, gt=0)
    prediction_start_timeout_seconds: float = Field(default=600, gt=0)
    max_download_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    # Where outputs may be downloaded from, besides the API's origin and data: URIs.
    output_url_prefixes: Annotated[tuple[OutputPrefix, ...], NoDecode] = DEFAULT_OUTPUT_PREFIXES
    # Webhooks: set the public URL (reaching the listener below) and predictions push their end.
    public_webhook_url: str | None = None
    webhook_listen_host: str = "0.0.0.0"  # every interface: the proxy or API must reach it
    webhook_listen_port: int = Field(default=8080, ge=0, le=65535)
    webhook_progress: bool = True  # also push log lines, for the progress bar

    # Request budgets and progress: how often a running prediction's progress is read when
    # polling (0: never; the create is then held its full minute), and the requests a minute
    # to the prediction API (besides creates) and a second to Discord the bot may spend.
    progress_poll_seconds: float = Field(default=5, ge=0, le=60)
    api_requests_per_minute: int = Field(default=2400, ge=60, le=100_000)
    discord_requests_per_second: int = Field(default=40, ge=5, le=1000)

    # Monitoring: /metrics, /healthz and /readyz (off unless a port is set), and the log format.
    metrics_listen_host: str = "127.0.0.1"  # this machine only, unless the operator says so
    metrics_listen_port: int | None = Field(default=None, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"

    # Self-hosted Cog servers of the model (README: "Run it on your own GPU"): `name=url` or
    # `url`, comma-separated; where they reach the bot's listener; when a job waiting for a
    # GPU goes to Replicate instead (None: never); their price; how often they are checked.
    cog_urls: Annotated[tuple[tuple[str, str], ...], NoDecode] = ()
    cog_callback_url: str | None = None
    overflow_after_seconds: float | None = Field(default=None, ge=0)
    cog_price_per_gpu_second: float = Field(default=0, ge=0)
    cog_health_check_seconds: float = Field(default=2.0, gt=0, le=60)

    # Defaults of every server's settings; each server's owner may change them in Discord.
    default_model: str = DEFAULT_CHECKPOINT
    default_motion_module: str = DEFAULT_MOTION_MODULE
    default_steps: int = Field(default=DEFAULT_STEPS, ge=MIN_STEPS, le=MAX_STEPS)
    default_guidance_scale: float = Field(
        default=DEFAULT_GUIDANCE, ge=MIN_GUIDANCE, le=MAX_GUIDANCE
    )
    default_negative_prompt: str = Field(default="", max_length=500)
    default_spoilers: bool = False
    default_age_restricted_only: bool = False
    max_requests_per_member_per_day: int = Field(default=0, ge=0, le=10_000)  # 0: no limit
    max_gpu_seconds_per_guild_per_day: float = Field(default=0, ge=0)  # 0: no limit
    # Nvidia A40 (Large), which lucataco/animate-diff runs on: Replicate's pricing page.
    price_per_gpu_second: float = Field(default=0.000725, ge=0)

    @field_validator("discord_token", "replicate_api_token")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        """Reject tokens that are empty or only whitespace."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("discord_guild_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        """Accept a comma-separated list of guild ids."""
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            return tuple(int(part) for part in parts if part)
        return value

    @field_validator("shard_count", mode="before")
    @classmethod
    def _shard_count(cls, value: object) -> object:
        """Accept empty (one shard), a whole number of shards, or `auto`."""
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if not text:
            return None
        if text == "auto":
            return "auto"
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ValueError("must be empty (one shard), a number of shards (1 or more), or auto")
        return int(text)

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _split_shard_ids(cls, value: object) -> object:
        """Accept a comma-separated list of shard numbers (`0,1`); empty: every shard."""
        if not isinstance(value, str):
            return value
        parts = [part.strip() for part in value.split(",")]
        malformed = any(not (part.isascii() and part.isdigit()) for part in parts)
        if value.strip() and malformed:
            raise ValueError("must be comma-separated shard numbers, such as 0,1")
        return tuple(int(part) for part in parts if part)

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids_within_count(
        cls, value: tuple[int, ...], info: ValidationInfo
    ) -> tuple[int, ...]:
        """Require a numeric SHARD_COUNT, each shard below it, and no shard twice."""
        if not value:
            return value
        count = info.data.get("shard_count")
        if not isinstance(count, int):
            raise ValueError("needs SHARD_COUNT set to a number of shards (not empty or auto)")
        outside = [shard for shard in value if shard >= count]
        if outside:
            raise ValueError(
                f"shard {outside[0]} is outside SHARD_COUNT={count} (0 to {count - 1})"
            )
        if len(set(value)) != len(value):
            raise ValueError("names a shard more than once")
        return value

    @field_validator("output_url_prefixes", mode="before")
    @classmethod
    def _output_prefixes(cls, value: object) -> object:
        """Accept comma-separated `scheme://host[:port]/path` prefixes (`*.` for subdomains)."""
        if isinstance(value, str):
            return parse_output_prefixes(value)
        return value

    @field_validator("replicate_api_base", "discord_api_base")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        """Drop a trailing slash so paths can be appended."""
        return value.rstrip("/")

    @field_validator(
        "discord_gateway_url", "overflow_after_seconds", "metrics_listen_port", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """Treat an empty value as unset: Discord's gateway, never overflow, no listener."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: object) -> object:
        """Accept empty (SQLite at DATABASE_PATH) or a postgresql:// or postgres:// URL."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        problem = postgres_url_problem(value.strip())
        if problem is not None:
            raise ValueError(problem)  # never the value: it may hold a password
        return value.strip()

    @field_validator("cog_urls", mode="before")
    @classmethod
    def _cog_urls(cls, value: object) -> object:
        """Accept comma-separated `name=url` or `url` entries."""
        return parse_cog_urls(value) if isinstance(value, str) else value

    @field_validator("public_webhook_url", "cog_callback_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: object, info: ValidationInfo) -> object:
        """Accept an absolute http(s) URL; empty means no webhooks."""
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None
        url = yarl.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        if info.field_name == "cog_callback_url" and (url.query_string or url.fragment):
            raise ValueError("must have no ?query or #fragment (the bot appends paths to it)")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _known_format(cls, value: object) -> object:
        """Accept `text` or `json` in any case."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("default_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        """Accept only a checkpoint the model knows."""
        if value not in CHECKPOINTS:
            raise ValueError(f"must be one of {', '.join(CHECKPOINTS)}")
        return value

    @field_validator("default_motion_module")
    @classmethod
    def _known_motion_module(cls, value: str) -> str:
        """Accept only a motion module the model knows."""
        if value not in MOTION_MODULES:
            raise ValueError(f"must be one of {', '.join(MOTION_MODULES)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        """Accept only the standard logging level names."""
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    def guild_defaults(self) -> GuildSettings:
        """The settings of a server whose owner changed nothing."""
        return GuildSettings(
            channel_ids=(),
            model=self.default_model,
            motion_module=self.default_motion_module,
            steps=self.default_steps,
            guidance_scale=self.default_guidance_scale,
            running_limit=self.max_running_per_guild,
            queued_per_member=self.max_queued_per_member,
            daily_requests_per_member=self.max_requests_per_member_per_day,
            daily_gpu_seconds=self.max_gpu_seconds_per_guild_per_day,
            negative_prompt=self.default_negative_prompt.strip(),
            blocked_patterns=(),
            spoilers=self.default_spoilers,
            age_restricted_only=self.default_age_restricted_only,
        )


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read settings, turning validation problems into one readable line."""
    try:
        settings = Settings(_env_file=env_file)  # pyright: ignore[reportCallIssue]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    if settings.replicate_api_token is None and not settings.cog_urls:
        # Worded as for any missing setting; README says COG_URLS can take its place.
        raise SettingsError("REPLICATE_API_TOKEN is not set: put it in the environment or in .env")
    if settings.overflow_after_seconds is not None and settings.replicate_api_token is None:
        raise SettingsError(
            "OVERFLOW_AFTER_SECONDS is invalid: it sends jobs to Replicate, so it needs "
            "REPLICATE_API_TOKEN (leave it empty to run every job on COG_URLS)"
        )
    return settings


def _describe(exc: ValidationError) -> str:
    """Name the first bad variable and say what is wrong with it."""
    error = exc.errors()[0]
    name = str(error["loc"][0]).upper() if error["loc"] else "settings"
    if error["type"] == "missing":
        return f"{name} is not set: put it in the environment or in .env"
    return f"{name} is invalid: {error['msg']}"
