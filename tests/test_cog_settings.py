"""COG_URLS and the other Cog settings, and the one-line refusals of bad ones."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.app.cog_setup import CogSetup
from bot.app.settings import SettingsError, load_settings
from bot.backends.cog.config import parse_cog_urls, unreachable_callbacks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("DISCORD_", "REPLICATE_", "COG_", "OVERFLOW_", "WEBHOOK_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "d")


def test_servers_are_named_by_the_operator_or_in_order() -> None:
    assert parse_cog_urls(" gpu-a=http://10.0.0.5:5000/ , http://gpu.lan:5001,, ") == (
        ("gpu-a", "http://10.0.0.5:5000"),
        ("cog-2", "http://gpu.lan:5001"),
    )
    assert parse_cog_urls("") == ()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("gpu-a=10.0.0.5:5000", "'gpu-a=10.0.0.5:5000' is not a URL"),
        ("http://ok:5000,ftp://gpu:21", "'ftp://gpu:21' is not a URL"),
        ("gpu a=http://h:1", "'gpu a' is not a server name"),
        ("a=http://h:1,a=http://h:2", "names the server 'a' twice"),
        ("http://h:1/?x=1", "without ?query"),
        ("a=http://h:1/,b=http://h:1", "'b' and 'a' are the same server (http://h:1)"),
    ],
)
def test_an_entry_that_is_not_a_server_url_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, named: str
) -> None:
    monkeypatch.setenv("COG_URLS", value)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith("COG_URLS is invalid") and named in message
    assert "\n" not in message


def test_cog_urls_make_the_replicate_token_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="REPLICATE_API_TOKEN is not set"):
        load_settings(env_file=None)
    monkeypatch.setenv("COG_URLS", "gpu-a=http://127.0.0.1:5000")
    monkeypatch.setenv("OVERFLOW_AFTER_SECONDS", "")
    settings = load_settings(env_file=None)
    assert settings.replicate_api_token is None and settings.overflow_after_seconds is None
    assert settings.cog_callback_url is None and settings.cog_price_per_gpu_second == 0
    monkeypatch.setenv("COG_CALLBACK_URL", "http://bot:8080/cog")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r")
    monkeypatch.setenv("OVERFLOW_AFTER_SECONDS", "90")
    settings = load_settings(env_file=None)
    assert settings.overflow_after_seconds == 90 and settings.cog_callback_url


def test_overflow_without_a_replicate_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COG_URLS", "gpu-a=http://127.0.0.1:5000")
    monkeypatch.setenv("OVERFLOW_AFTER_SECONDS", "90")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith("OVERFLOW_AFTER_SECONDS is invalid") and "\n" not in message
    assert "REPLICATE_API_TOKEN" in message


@pytest.mark.parametrize("url", ["http://bot:8080/cog?x=1", "http://bot:8080/cog#top"])
def test_a_callback_url_with_a_query_or_fragment_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("COG_URLS", "gpu-a=http://10.0.0.5:5000")
    monkeypatch.setenv("COG_CALLBACK_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith("COG_CALLBACK_URL is invalid") and "?query or #fragment" in message


async def test_a_loopback_callback_url_with_a_server_elsewhere_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("COG_URLS", "here=http://127.0.0.1:5000,far=http://10.0.0.5:5000")
    monkeypatch.setenv("COG_CALLBACK_URL", "http://localhost:8080/cog")
    settings = load_settings(env_file=None)
    async with aiohttp.ClientSession() as session:
        CogSetup(settings, session, None)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "COG_CALLBACK_URL http://localhost:8080/cog" in warning and "far" in warning
    assert "here" not in warning.split("server(s)")[1]
    assert unreachable_callbacks("http://[::1]:80/c", [("a", "http://10.0.0.5:1")]) == ["a"]
    assert unreachable_callbacks("http://10.0.0.2:80/c", [("a", "http://10.0.0.5:1")]) == []
    assert unreachable_callbacks("http://127.0.0.1/c", [("a", "http://127.0.0.2:1")]) == []


def test_the_bot_exits_2_naming_a_bad_cog_url(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REPLICATE_", "COG_"))}
    environ.update(PYTHONPATH=str(ROOT), DISCORD_TOKEN="d", COG_URLS="gpu-a=http://ok:1,oops")
    done = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "'oops' is not a URL" in done.stderr
    assert "COG_URLS" in done.stderr and "Traceback" not in done.stderr
