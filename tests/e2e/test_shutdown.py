"""Guarantee 7: SIGTERM stops the bot in seconds, leaving every job recorded and resumable."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.e2e.conftest import BOB, CAROL, CHANNEL_B, GUILD_B, World
from tests.fakes.predictions import Behaviour

# Generous for a shared machine; the bot's own grace period is 5 s and it needs far less.
EXIT_WITHIN_SECONDS = 8


@pytest.mark.bot_env(PREDICTION_WAIT_SECONDS="1")
async def test_sigterm_while_running_resumes_polling_after_restart(world: World) -> None:
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    request = await world.request_message(await world.animate("patient", steps=10))
    await world.api.wait_for(lambda: world.api.polls >= 1)
    assert await world.restart(signal.SIGTERM) == 0
    polls_before = world.api.polls
    hold.set()
    await world.result_for(request)
    assert world.api.polls > polls_before and world.api.creates == 1
    assert len(world.results()) == 1


@pytest.mark.bot_env(PREDICTION_WAIT_SECONDS="60", MAX_RUNNING_PER_GUILD="2")
async def test_sigterm_with_creates_held_polls_and_a_queue_exits_fast_and_resumes(
    world: World,
) -> None:
    hold = asyncio.Event()
    for _ in range(3):
        world.api.next_behaviours.append(Behaviour(hold=hold))
    # Two running in one server (their creates held open by the API), one in another, and
    # one waiting in the queue behind the first two.
    requests = [
        await world.request_message(await world.animate("one", steps=5)),
        await world.request_message(await world.animate("two", steps=5, user=BOB)),
        await world.request_message(
            await world.animate("three", guild=GUILD_B, channel=CHANNEL_B, steps=5)
        ),
        await world.request_message(await world.animate("four", steps=5, user=CAROL)),
    ]
    await world.api.wait_for(lambda: world.api.creates == 3)
    assert "Queued" in requests[3].content

    assert await world.bot.stop(signal.SIGTERM, timeout=EXIT_WITHIN_SECONDS) == 0
    assert "resume on the next start" in world.bot.log()
    statuses = [world.job(job_id)["status"] for job_id in range(1, 5)]
    # The creates were cut off unanswered: each may exist upstream and is looked up on start.
    assert statuses == ["submitted", "submitted", "submitted", "queued"]

    hold.set()
    await world.start_again()
    results = [await world.result_for(request) for request in requests]
    assert len({result.id for result in results}) == 4
    assert world.api.creates == 4, "a prediction was paid for twice"
    assert len(world.results()) == 3 and len(world.results(CHANNEL_B)) == 1
