"""Settings from the environment and .env, and the entry point's refusal without tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app.settings import DEFAULT_MODEL_VERSION, Settings, SettingsError, load_settings
from bot.backends.output_hosts import DEFAULT_OUTPUT_PREFIXES, OutputPrefix

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(
            (
                "DISCORD_",
                "REPLICATE_",
                "DATABASE_",
                "MAX_",
                "PREDICTION_",
                "WEBHOOK_",
                "PUBLIC_",
                "OUTPUT_",
                "SHARD_",
            )
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_with_only_the_two_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "d")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r")
    settings = load_settings()
    assert settings.replicate_api_base == "https://api.replicate.com/v1"
    assert settings.replicate_model_version == DEFAULT_MODEL_VERSION
    assert settings.database_path == Path("data/animate-bot.sqlite3")
    assert settings.discord_guild_ids == ()
    assert settings.discord_api_base == "https://discord.com/api/v10"
    assert settings.discord_gateway_url is None
    assert (settings.max_running_per_guild, settings.max_running_total) == (1, 4)
    assert settings.max_queued_per_member == 3
    assert settings.public_webhook_url is None, "no webhooks unless asked for"
    assert settings.output_url_prefixes == DEFAULT_OUTPUT_PREFIXES


def test_env_example_lists_every_setting_and_loads_once_the_tokens_are_in(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    names = {
        line.split("=", 1)[0] for line in example.splitlines() if "=" in line and line[0] != "#"
    }
    assert names == {field.upper() for field in Settings.model_fields}
    filled = example.replace("DISCORD_TOKEN=\n", "DISCORD_TOKEN=d\n").replace(
        "REPLICATE_API_TOKEN=\n", "REPLICATE_API_TOKEN=r\n"
    )
    (tmp_path / ".env").write_text(filled)
    settings = load_settings()
    assert settings.public_webhook_url is None and settings.webhook_listen_port == 8080


def test_a_webhook_url_must_be_absolute_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "d")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r")
    monkeypatch.setenv("PUBLIC_WEBHOOK_URL", " https://bot.example.com/hooks ")
    assert load_settings().public_webhook_url == "https://bot.example.com/hooks"
    for bad in ("bot.example.com/hooks", "ftp://bot.example.com/", "https://"):
        monkeypatch.setenv("PUBLIC_WEBHOOK_URL", bad)
        with pytest.raises(SettingsError, match="PUBLIC_WEBHOOK_URL is invalid"):
            load_settings()


def test_output_url_prefixes_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "d")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r")
    monkeypatch.setenv(
        "OUTPUT_URL_PREFIXES", " https://*.replicate.delivery/ , http://10.0.0.5:9000/files/,"
    )
    assert load_settings().output_url_prefixes == (
        OutputPrefix("https", "replicate.delivery", True, 443, "/", trusted_as_written=False),
        OutputPrefix("http", "10.0.0.5", False, 9000, "/files/", trusted_as_written=True),
    )
    monkeypatch.setenv("OUTPUT_URL_PREFIXES", "")
    assert load_settings().output_url_prefixes == ()


@pytest.mark.parametrize(
    "bad",
    [
        "replicate.delivery",
        "https://replicate.delivery/,ftp://files.example.com/",
        "https://",
        "https://bob:hunter2@files.example.com/",
        "https://files.example.com/out?sig=1",
        "https://files.example.com/out#top",
        "https://*.10.0.0.5/",
    ],
)
def test_a_bad_output_url_prefix_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "d")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r")
    monkeypatch.setenv("OUTPUT_URL_PREFIXES", bad)
    with pytest.raises(SettingsError, match=r"^OUTPUT_URL_PREFIXES is invalid") as caught:
        load_settings()
    assert "\n" not in str(caught.value) and "hunter2" not in str(caught.value)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DISCORD_TOKEN=from-file\nREPLICATE_API_TOKEN=r\nDISCORD_GUILD_IDS=1, 22 ,333\n"
        "REPLICATE_API_BASE=http://gateway.local/v1/\nLOG_LEVEL=debug\n"
    )
    settings = load_settings()
    assert settings.discord_token.get_secret_value() == "from-file"
    assert settings.discord_guild_ids == (1, 22, 333)
    assert settings.replicate_api_base == "http://gateway.local/v1"
    assert settings.log_level == "DEBUG"
    assert "from-file" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REPLICATE_API_TOKEN": "r"}, "DISCORD_TOKEN is not set"),
        ({"DISCORD_TOKEN": "d"}, "REPLICATE_API_TOKEN is not set"),
        ({"DISCORD_TOKEN": "", "REPLICATE_API_TOKEN": "r"}, "DISCORD_TOKEN is invalid"),
        (
            {"DISCORD_TOKEN": "d", "REPLICATE_API_TOKEN": "r", "MAX_RUNNING_TOTAL": "0"},
            "MAX_RUNNING_TOTAL is invalid",
        ),
        (
            {"DISCORD_TOKEN": "d", "REPLICATE_API_TOKEN": "r", "DISCORD_GUILD_IDS": "abc"},
            "DISCORD_GUILD_IDS is invalid",
        ),
    ],
)
def test_bad_settings_are_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m bot` in `tmp_path` without the caller's tokens, with `env` added."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "REPLICATE_"))}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_missing_token_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = run_bot(tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "animate-bot: DISCORD_TOKEN is not set: put it in the environment or in .env"
    )
    assert "Traceback" not in done.stderr


def test_a_bad_output_url_prefix_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_bot(
        tmp_path,
        DISCORD_TOKEN="d",
        REPLICATE_API_TOKEN="r",
        OUTPUT_URL_PREFIXES="https://replicate.delivery/,files.example.com/outputs/",
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("animate-bot: OUTPUT_URL_PREFIXES is invalid")
    assert "files.example.com/outputs/" in lines[0]
