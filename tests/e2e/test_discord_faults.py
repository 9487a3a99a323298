"""Guarantee 3: Discord refusing, throttling or forgetting things never loses or repeats a job."""

from __future__ import annotations

import asyncio

from tests.e2e.conftest import ALICE, CHANNEL_A, CHANNEL_B, GUILD_B, World
from tests.fakes.predictions import Behaviour

MISSING_PERMISSIONS = {"message": "Missing Permissions", "code": 50013}


def channel_posts(world: World, channel: int) -> int:
    """How many times the bot tried to post a message in a channel."""
    return sum(
        1
        for r in world.discord.requests
        if r.method == "POST" and r.path == f"/channels/{channel}/messages"
    )


async def test_lost_permission_to_post_sends_the_result_by_dm(world: World) -> None:
    world.discord.fail_next(
        "POST", rf"^/channels/{CHANNEL_A}/messages$", status=403, body=MISSING_PERMISSIONS
    )
    request = await world.request_message(await world.animate("forbidden", steps=5, seed=77))
    await world.discord.wait_for(lambda: "direct message" in request.content)
    dm = world.discord.dm_messages(ALICE)
    assert len(dm) == 1 and dm[0].attachments[0].data == world.api.sample
    assert "no longer allowed to post there" in dm[0].content
    assert dm[0].allowed_mentions == {"parse": []}
    assert dm[0].components == []  # buttons act on the server, not in a DM
    assert world.results() == []
    assert (await world.job_reaches("done"))["result_message_id"] == dm[0].id
    # The queue moves on: the next request posts in the channel as usual.
    following = await world.request_message(await world.animate("allowed", steps=5))
    await world.result_for(following)


async def test_without_permission_or_dms_the_failure_is_recorded_once(world: World) -> None:
    world.discord.close_dms(ALICE)
    world.discord.fail_next(
        "POST", rf"^/channels/{CHANNEL_A}/messages$", status=403, body=MISSING_PERMISSIONS
    )
    request = await world.request_message(await world.animate("nowhere to go", steps=5))
    await world.discord.wait_for(lambda: "❌" in request.content)
    assert "may not post it in this channel" in request.content
    assert "direct messages" in request.content
    assert "direct messages" in (await world.job_reaches("failed"))["error"]
    assert channel_posts(world, CHANNEL_A) == 1  # never retried
    assert world.results() == [] and world.discord.dm_messages(ALICE) == []


async def test_a_channel_deleted_while_the_job_ran_delivers_by_dm(world: World) -> None:
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    request = await world.request_message(
        await world.animate("orphan", guild=GUILD_B, channel=CHANNEL_B, steps=5)
    )
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    await world.discord.delete_channel(CHANNEL_B)
    hold.set()
    dm = await world.discord.wait_for(lambda: world.discord.dm_messages(ALICE))
    assert "no longer exists" in dm[0].content and dm[0].attachments
    await world.job_reaches("done")
    assert "✅" not in request.content  # its channel is gone: no edit can land


async def test_a_deleted_channel_without_dms_is_recorded_as_failed(world: World) -> None:
    world.discord.close_dms(ALICE)
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    await world.request_message(
        await world.animate("orphan", guild=GUILD_B, channel=CHANNEL_B, steps=5)
    )
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    await world.discord.delete_channel(CHANNEL_B)
    hold.set()
    assert "channel is gone" in (await world.job_reaches("failed"))["error"]
    # The result, then the failure notice in place of the vanished status message; no loop.
    await world.discord.wait_for(lambda: channel_posts(world, CHANNEL_B) == 2)
    # The bot is alive and serves the other server; it never tried the channel again.
    await world.result_for(await world.request_message(await world.animate("still here")))
    assert channel_posts(world, CHANNEL_B) == 2


async def test_a_429_on_the_result_post_is_waited_out_and_posted_once(world: World) -> None:
    world.discord.fail_next(
        "POST",
        rf"^/channels/{CHANNEL_A}/messages$",
        status=429,
        body={"message": "You are being rate limited.", "retry_after": 0.2, "global": False},
        headers={"Retry-After": "1"},
    )
    request = await world.request_message(await world.animate("throttled", steps=5))
    await world.result_for(request)
    await world.discord.wait_for(lambda: "Done" in request.content)
    assert len(world.results()) == 1 and channel_posts(world, CHANNEL_A) == 2
    await world.job_reaches("done")


async def test_a_status_message_deleted_mid_job_does_not_fail_it(world: World) -> None:
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    interaction = await world.animate("unwatched", steps=10)
    request = await world.request_message(interaction)
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    request.deleted = True  # a moderator removed it: every edit now answers 10008
    hold.set()
    await world.discord.wait_for(world.results)
    await world.job_reaches("done")
    unknown = [r for r in world.discord.requests if r.status == 404]
    assert unknown, "the bot should have met 10008 Unknown Message"


async def test_throttled_status_edits_never_fail_the_job(world: World) -> None:
    world.discord.fail_next(
        "PATCH",
        rf"^/channels/{CHANNEL_A}/messages/\d+$",
        status=429,
        body={"message": "You are being rate limited.", "retry_after": 0.1, "global": False},
        times=3,
    )
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    request = await world.request_message(await world.animate("edits throttled", steps=10))
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    hold.set()
    await world.result_for(request)
    await world.discord.wait_for(lambda: "Done" in request.content)
    await world.job_reaches("done")
    assert any(r.method == "PATCH" and r.status == 429 for r in world.discord.requests)
