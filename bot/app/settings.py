"""Settings read from the environment and from `.env` in the working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yarl
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    replicate_api_token: SecretStr
    replicate_api_base: str = "https://api.replicate.com/v1"
    replicate_model_version: str = DEFAULT_MODEL_VERSION
    database_path: Path = Path("data/animate-bot.sqlite3")
    discord_guild_ids: Annotated[tuple[int, ...], NoDecode] = ()
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str | None = None
    log_level: str = "INFO"

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
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        """Reject tokens that are empty or only whitespace."""
        if not value.get_secret_value().strip():
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

    @field_validator("discord_gateway_url", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        """Treat an empty gateway URL as "use Discord's"."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("public_webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: object) -> object:
        """Accept an absolute http(s) URL; empty means no webhooks."""
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None
        url = yarl.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value

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
        return Settings(_env_file=env_file)  # pyright: ignore[reportCallIssue]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """Name the first bad variable and say what is wrong with it."""
    error = exc.errors()[0]
    name = str(error["loc"][0]).upper() if error["loc"] else "settings"
    if error["type"] == "missing":
        return f"{name} is not set: put it in the environment or in .env"
    return f"{name} is invalid: {error['msg']}"
