"""Guarantee 1: killed at any boundary, the bot delivers every accepted request exactly once.

Each test runs the real bot with ANIMATE_CRASH_AT naming a point of the job's life (see
bot/crashpoints.py and docs/job-states.md); the process SIGKILLs itself there, and the test
starts it again on the same database.
"""

from __future__ import annotations

import signal

import pytest

from bot.crashpoints import CRASH_ENV, POINTS
from tests.e2e.conftest import ALICE, CHANNEL_A, World

AFTER_THE_MESSAGE = [point for point in POINTS if point != "accepted"]


async def crash_and_restart(world: World, point: str) -> None:
    """Wait for the bot to kill itself at the point, then start it without the switch."""
    assert await world.bot.wait_exit() == -signal.SIGKILL
    assert f"crash point '{point}' reached" in world.bot.log()
    await world.start_again(**{CRASH_ENV: None})


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
    # On its way again, the job posts a status message of its own and replies to it.
    done = await world.job_reaches("done")
    status = world.discord.messages[done["request_message_id"]]
    result = await world.result_for(status)
    assert result.id == done["result_message_id"] and "Done" in status.content
    assert world.api.creates == 1 and len(world.results()) == 1


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
    world.discord.fail_next("PATCH", r"/messages/@original$", status=403, body=MISSING_PERMISSIONS)
    world.discord.fail_next(
        "POST", rf"^/channels/{CHANNEL_A}/messages$", status=403, body=MISSING_PERMISSIONS
    )
    await world.animate("unannounced", steps=5, seed=11)
    await crash_and_restart(world, "posted")
    assert len(world.results()) == 1
    done = await world.job_reaches("done")
    assert done["result_message_id"] == world.results()[0].id
    assert len(world.results()) == 1, "the result was posted twice"
