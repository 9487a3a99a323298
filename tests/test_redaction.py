"""Secrets are masked in log output, tracebacks included, and in text shown to people."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from bot.__main__ import configure_logging
from bot.core import redaction
from bot.core.redaction import MASK, RedactingFilter, redact

DISCORD_SECRET = "MTAwMA.discord-secret.token"
API_SECRET = "r8_api-secret-token-value"


@pytest.fixture
def secrets() -> Iterator[None]:
    """Register the two tokens for one test."""
    redaction.register_secret(DISCORD_SECRET)
    redaction.register_secret(API_SECRET)
    try:
        yield
    finally:
        redaction.forget_secrets()


@pytest.fixture
def captured(secrets: None) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through a masked handler into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_registered_secrets_bearer_values_and_url_credentials_are_masked(secrets: None) -> None:
    text = redact(
        f"token {API_SECRET} and {DISCORD_SECRET}; Authorization: Bearer abc.def; "
        "{'Authorization': 'Bot zzz.yyy'}; https://me:pw@host.example/x?a=1&api_key=k3y"
    )
    for leaked in (API_SECRET, DISCORD_SECRET, "abc.def", "zzz.yyy", "me:pw", "k3y"):
        assert leaked not in text
    assert "a=1" in text and "host.example/x" in text
    assert redact(text) == text  # masking twice changes nothing


def test_ordinary_text_is_left_alone(secrets: None) -> None:
    text = "the token was refused; job 12 failed: CUDA out of memory (bearer of bad news?)"
    assert redact(text).startswith("the token was refused; job 12 failed: CUDA out of memory")


def test_short_values_are_not_registered() -> None:
    redaction.register_secret("abc")
    try:
        assert redact("abc abc") == "abc abc"
    finally:
        redaction.forget_secrets()


def test_log_filter_masks_message_args_and_traceback(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("sending %s with %r", API_SECRET, {"Authorization": f"Bearer {API_SECRET}"})
    try:
        raise RuntimeError(f"Discord refused {DISCORD_SECRET}")
    except RuntimeError:
        logger.exception("login failed for %s", DISCORD_SECRET)
    output = stream.getvalue()
    assert API_SECRET not in output and DISCORD_SECRET not in output
    assert output.count(MASK) >= 3
    assert "RuntimeError: Discord refused" in output and "Traceback" in output


def test_an_invisible_character_cannot_split_a_secret_in_a_log_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    split = f"{API_SECRET[:5]}\u200b{API_SECRET[5:]}"
    logger.warning("the API said: %s", f"bad token {split}")
    assert stream.getvalue() == f"WARNING test.redaction: the API said: bad token {MASK}\n"


def test_a_record_with_bad_arguments_is_still_logged_without_them(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("two %s %s", API_SECRET)  # noqa: PLE1206 - one argument short on purpose
    output = stream.getvalue()
    assert "unformattable" in output and API_SECRET not in output


def test_configure_logging_masks_the_tokens_on_every_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    for handler in before:
        root.removeHandler(handler)
    try:
        configure_logging("DEBUG", secrets=[DISCORD_SECRET, API_SECRET])
        logging.getLogger("discord.http").debug("PATCH with Bot %s", DISCORD_SECRET)
        logging.getLogger("aiohttp.client").warning("header Bearer %s", API_SECRET)
        err = capsys.readouterr().err
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)
        root.setLevel(level)
        redaction.forget_secrets()
    assert "PATCH with Bot" in err and "header Bearer" in err
    assert DISCORD_SECRET not in err and API_SECRET not in err


INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2:Zm9vYmFyLWludGVyYWN0aW9uLXRva2Vu"


def test_interaction_tokens_are_masked_in_paths_and_payloads() -> None:
    # Unregistered: an interaction's token is masked by where it stands, not by a list.
    base = "https://discord.com/api/v10"
    lines = [
        # discord.py's webhook adapter, at DEBUG, for an edit of the original response.
        f"Webhook ID 1234 with PATCH {base}/webhooks/1234/{INTERACTION_TOKEN}/messages/@original"
        "?with_components=1 has returned status code 404",
        f"POST {base}/interactions/5678/{INTERACTION_TOKEN}/callback has returned 204",
        # The gateway's INTERACTION_CREATE, as discord.py logs a received event at DEBUG.
        str({"t": "INTERACTION_CREATE", "d": {"id": "5678", "token": INTERACTION_TOKEN}}),
        f'{{"application_id": "1234", "token": "{INTERACTION_TOKEN}"}}',
    ]
    for line in lines:
        masked = redact(line)
        assert INTERACTION_TOKEN not in masked and MASK in masked, masked
        assert redact(masked) == masked
    first = redact(lines[0])
    assert "/webhooks/1234/[redacted]/messages/@original" in first and "404" in first
    assert "/interactions/5678/[redacted]/callback" in redact(lines[1])


def test_the_log_filter_masks_an_interaction_token(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.debug(
        "PATCH https://discord.com/api/v10/webhooks/1/%s/messages/@original", INTERACTION_TOKEN
    )
    logger.debug("For Shard ID 0: WebSocket Event: %s", {"d": {"token": INTERACTION_TOKEN}})
    output = stream.getvalue()
    assert INTERACTION_TOKEN not in output and output.count(MASK) == 2
