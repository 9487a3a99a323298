"""Guarantee 6: Delete and Cancel obey the same rules for fresh, replayed and forged presses."""

from __future__ import annotations

import asyncio

from tests.e2e.conftest import ALICE, BOB, CHANNEL_B, GUILD_B, MODERATOR, World
from tests.fakes.discord import FakeMessage
from tests.fakes.predictions import Behaviour


async def press(world: World, message: FakeMessage, custom_id: str, user: int) -> str:
    """Press a button (forging its custom_id on the message first) and return the reply."""
    message.components[0]["components"][-1]["custom_id"] = custom_id
    interaction = await world.discord.click(message, custom_id, user_id=user)

    def reply() -> str:
        if interaction.original is not None and interaction.original.content:
            return interaction.original.content  # deferred, then edited
        data = interaction.callbacks[-1].get("data") if interaction.callbacks else None
        return str((data or {}).get("content") or "")

    text = await world.discord.wait_for(reply)
    assert interaction.ephemeral, "refusals and confirmations are for the presser only"
    return text


async def test_only_the_requester_or_a_moderator_may_delete(world: World) -> None:
    result = await world.result_for(
        await world.request_message(await world.animate("a boat", steps=5))
    )
    delete_id = result.button("Delete")["custom_id"]
    refused = await world.discord.click(result, delete_id, user_id=BOB)
    await world.discord.wait_for(lambda: refused.callbacks)
    assert (
        refused.ephemeral and "Only the person who asked" in refused.callbacks[0]["data"]["content"]
    )
    assert not result.deleted

    allowed = await world.discord.click(result, delete_id, user_id=MODERATOR)
    await world.discord.wait_for(lambda: result.deleted)
    assert allowed.ephemeral

    own = await world.result_for(
        await world.request_message(await world.animate("another boat", steps=5))
    )
    await world.discord.click(own, own.button("Delete")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: own.deleted)


async def test_buttons_of_another_server_or_unknown_jobs_are_refused(world: World) -> None:
    theirs = await world.result_for(
        await world.request_message(
            await world.animate("their bird", guild=GUILD_B, channel=CHANNEL_B, steps=5)
        )
    )
    ours = await world.result_for(
        await world.request_message(await world.animate("our bird", steps=5))
    )
    their_job = theirs.button("Delete")["custom_id"].rsplit(":", 1)[1]
    for forged_id in (f"animate:delete:{their_job}", "animate:cancel:999999"):
        # A client that forges the custom_id on a message in this server.
        ours.components[0]["components"][2]["custom_id"] = forged_id
        forged = await world.discord.click(ours, forged_id, user_id=MODERATOR)
        await world.discord.wait_for(lambda f=forged: f.callbacks)
        assert "no longer exists" in forged.callbacks[0]["data"]["content"]
        assert forged.ephemeral
    assert not theirs.deleted and not ours.deleted


async def test_forged_ids_that_name_no_job_are_refused(world: World) -> None:
    ours = await world.result_for(
        await world.request_message(await world.animate("our bird", steps=5))
    )
    for forged_id in ("animate:delete:0", "animate:delete:99999999999999999999999999"):
        assert "no longer exists" in await press(world, ours, forged_id, MODERATOR)
    assert not ours.deleted


async def test_presses_replayed_after_a_restart_are_checked_again(world: World) -> None:
    result = await world.result_for(
        await world.request_message(await world.animate("kept", steps=5))
    )
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    pending = await world.request_message(await world.animate("still running", steps=5))
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    delete_id = result.button("Delete")["custom_id"]
    cancel_id = pending.button("Cancel")["custom_id"]
    assert await world.restart() == 0

    assert "Only the person who asked" in await press(world, result, delete_id, BOB)
    assert "Only the person who asked" in await press(world, pending, cancel_id, BOB)
    assert not result.deleted and world.api.cancels == 0

    assert "Stopping it" in await press(world, pending, cancel_id, MODERATOR)
    await world.discord.wait_for(lambda: "Canceled" in pending.content)
    assert world.api.cancels >= 1
    assert "Deleted" in await press(world, result, delete_id, ALICE)
    await world.discord.wait_for(lambda: result.deleted)
    await world.job_reaches(deleted=1)


async def test_a_forged_delete_on_someone_elses_result_deletes_nothing(world: World) -> None:
    alices = await world.result_for(
        await world.request_message(await world.animate("alice's boat", steps=5))
    )
    bobs = await world.result_for(
        await world.request_message(await world.animate("bob's boat", steps=5, user=BOB))
    )
    bobs_job = bobs.button("Delete")["custom_id"].rsplit(":", 1)[1]
    # Bob presses Delete on Alice's result, carrying the custom_id of his own job.
    reply = await press(world, alices, f"animate:delete:{bobs_job}", BOB)
    assert reply == "That button does not belong to this animation."
    assert not alices.deleted and not bobs.deleted
    assert world.job(2)["deleted"] == 0
