"""Guarantee 1: killed at any boundary, the bot delivers every accepted request exactly once.

Each test runs the real bot with ANIMATE_CRASH_AT naming a point of the job's life (see
bot/core/crashpoints.py and docs/job-states.md); the process SIGKILLs itself there, and the test
starts it again on the same database.
"""

from __future__ import annotations

import re
import signal

import pytest

from bot.core.crashpoints import CRASH_ENV, POINTS
from tests.e2e.conftest import ALICE, CHANNEL_A, World
from tests.fakes.discord import FakeMessage

# Points a job passes before its status message id is stored; the rest come after it.
BEFORE_THE_MESSAGE = ("accepted", "acknowledged")
AFTER_THE_MESSAGE = [point for point in POINTS if point not in BEFORE_THE_MESSAGE]
EDIT_ORIGINAL = re.compile(r"^/webhooks/\d+/[^/]+/messages/@original$")


async def crash_and_restart(world: World, point: str) -> None:
    """Wait for the bot to kill itself at the point, then start it without the switch."""
    assert await world.bot.wait_exit() == -signal.SIGKILL
    assert f"crash point '{point}' reached" in world.bot.log()
    await world.start_again(**{CRASH_ENV: None})


def status_messages(world: World, channel: int = CHANNEL_A) -> list[FakeMessage]:
    """Visible messages in a channel that carry no file: the requests' status messages."""
    return [m for m in world.discord.channel_messages(channel) if not m.attachments]


def status_posts(world: World, channel: int = CHANNEL_A) -> list[object]:
    """Bodies of the channel posts the bot made without a file (status messages it sent)."""
    return [
        r.json
        for r in world.discord.requests
        if r.method == "POST" and r.path == f"/channels/{channel}/messages" and not r.files
    ]


def original_edits(world: World) -> list[int]:
    """Statuses Discord answered to edits of an interaction's original response."""
    return [
        r.status
        for r in world.discord.requests
        if r.method == "PATCH" and EDIT_ORIGINAL.match(r.path)
    ]


@pytest.mark.parametrize(
    "point",
    [pytest.param(p, marks=pytest.mark.bot_env(**{CRASH_ENV: p})) for p in AFTER_THE_MESSAGE],
)
async def test_a_crash_at_each_boundary_delivers_exactly_once(world: World, point: str) -> None:
    request = await world.request_message(await world.animate(f"crash {point}", steps=5, seed=42))
    await crash_and_restart(world, point)
    result = await world.result_for(request)
    done = await world.job_reaches("done")
    assert done["result_message_id"] == result.id
    assert world.api.creates == 1, "a second prediction was paid for"
    assert len(world.results()) == 1, "the result was posted twice"
    assert result.attachments[0].data == world.api.sample
    await world.discord.wait_for(lambda: "Done" in request.content)
    assert status_messages(world) == [request] and status_posts(world) == []
    searched = [r for r in world.api.requests if r.method == "GET" and r.path == "/v1/predictions"]
    # Only a job whose create may have been sent looks its prediction up in the list.
    assert bool(searched) == (point in ("submitted", "created"))
    assert ("already posted" in world.bot.log()) == (point == "posted")


@pytest.mark.bot_env(**{CRASH_ENV: "accepted"})
async def test_a_crash_before_the_request_message_was_recorded_still_delivers(
    world: World,
) -> None:
    interaction = await world.animate("crash accepted", steps=5, seed=43)
    await crash_and_restart(world, "accepted")
    assert not interaction.callbacks  # stored first: nothing was shown before the crash
    # On its way again, the job first tries the stored token: never acknowledged, Discord
    # does not know the response, so it posts a status message of its own and replies to it.
    done = await world.job_reaches("done")
    status = world.discord.messages[done["request_message_id"]]
    result = await world.result_for(status)
    assert result.id == done["result_message_id"] and "Done" in status.content
    assert world.api.creates == 1 and len(world.results()) == 1
    assert original_edits(world) == [404] and interaction.original is None
    assert status_messages(world) == [status] and len(status_posts(world)) == 1
    assert done["interaction_token"] is None
    assert interaction.token not in world.bot.log()


@pytest.mark.bot_env(**{CRASH_ENV: "acknowledged", "LOG_LEVEL": "DEBUG"})
async def test_a_crash_after_the_acknowledgement_turns_the_response_into_the_status(
    world: World,
) -> None:
    interaction = await world.animate("crash acknowledged", steps=5, seed=44)
    assert await world.bot.wait_exit() == -signal.SIGKILL
    thinking = interaction.original
    assert interaction.deferred and thinking is not None and not thinking.edits
    assert world.job()["interaction_token"] == interaction.token  # kept for the restart
    assert world.job()["request_message_id"] is None
    await world.start_again(**{CRASH_ENV: None})
    # The restarted job edits Discord's "thinking…" response through the stored token into
    # its status message, with the Cancel button, instead of posting a second one.
    done = await world.job_reaches("done")
    assert done["request_message_id"] == thinking.id and done["interaction_token"] is None
    result = await world.result_for(thinking)
    assert result.id == done["result_message_id"]
    await world.discord.wait_for(lambda: "Done" in thinking.content)
    assert status_messages(world) == [thinking], "a second status message was posted"
    assert status_posts(world) == [] and original_edits(world) == [200]
    first = thinking.edits[0]
    assert first["allowed_mentions"] == {"parse": []}
    assert "Cancel" in str(first["components"])
    assert world.api.creates == 1 and len(world.results()) == 1
    # Logged at DEBUG, discord.py's requests name the token in their path: it is masked.
    log = world.bot.log()
    assert re.search(r"PATCH \S+/webhooks/\d+/\[redacted\]/messages/", log)
    assert interaction.token not in log and "'token': '[redacted]'" in log


@pytest.mark.bot_env(**{CRASH_ENV: "running"})
async def test_an_output_that_expired_while_the_bot_was_down_is_made_again(world: World) -> None:
    request = await world.request_message(await world.animate("long nap", steps=5, seed=4321))
    assert await world.bot.wait_exit() == -signal.SIGKILL
    # Down for over an hour: the API has removed the output (output null, data_removed true).
    first = world.api.latest
    await world.api.wait_for(lambda: first.terminal)
    world.api.expire(first.id)
    await world.start_again(**{CRASH_ENV: None})
    result = await world.result_for(request)
    assert world.api.creates == 2
    rerun = world.api.create_bodies[-1]["input"]
    assert rerun == world.api.create_bodies[0]["input"] and rerun["seed"] == 4321
    fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
    assert fields["Seed"] == "4321"
    assert "expired" in fields["Note"] and "same input and seed" in fields["Note"]
    row = await world.job_reaches("done")
    assert row["reruns"] == 1 and row["prediction_id"] == world.api.latest.id
    assert len(world.results()) == 1


MISSING_PERMISSIONS = {"message": "Missing Permissions", "code": 50013}


@pytest.mark.bot_env(**{CRASH_ENV: "posted"})
async def test_a_result_sent_by_dm_before_a_crash_is_not_sent_again(world: World) -> None:
    world.discord.fail_next(
        "POST", rf"^/channels/{CHANNEL_A}/messages$", status=403, body=MISSING_PERMISSIONS
    )
    await world.request_message(await world.animate("forbidden then killed", steps=5, seed=9))
    await crash_and_restart(world, "posted")
    dm = world.discord.dm_messages(ALICE)
    assert len(dm) == 1  # sent before the kill
    assert (await world.job_reaches("done"))["result_message_id"] == dm[0].id
    assert len(world.discord.dm_messages(ALICE)) == 1 and world.results() == []


@pytest.mark.bot_env(**{CRASH_ENV: "posted"})
async def test_a_post_made_before_the_status_message_existed_is_found(world: World) -> None:
    # Neither the reply to the interaction nor the first status message could be posted,
    # so the result went out with no request message to search after.
    # Twice: the edit of the response, then its retry through the stored token.
    world.discord.fail_next(
        "PATCH", r"/messages/@original$", status=403, body=MISSING_PERMISSIONS, times=2
    )
    world.discord.fail_next(
        "POST", rf"^/channels/{CHANNEL_A}/messages$", status=403, body=MISSING_PERMISSIONS
    )
    await world.animate("unannounced", steps=5, seed=11)
    await crash_and_restart(world, "posted")
    assert len(world.results()) == 1
    done = await world.job_reaches("done")
    assert done["result_message_id"] == world.results()[0].id
    assert len(world.results()) == 1, "the result was posted twice"
