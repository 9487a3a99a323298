"""End to end: /animate, results, buttons and the queue, through real discord.py."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

import pytest

from tests.e2e.conftest import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL_A,
    CHANNEL_B,
    GUILD_A,
    GUILD_B,
    MODERATOR,
    World,
    labels,
)
from tests.fakes.predictions import Behaviour


def embed_fields(message: object) -> dict[str, str]:
    embed = message.embeds[0]  # type: ignore[attr-defined]
    return {field["name"]: field["value"] for field in embed["fields"]}


async def test_happy_path_posts_the_animation_with_its_settings(world: World) -> None:
    interaction = await world.animate(
        "a red fox running through snow",
        negative_prompt="blurry",
        steps=10,
        guidance_scale=6.5,
        seed=1234,
        model="lyriel_v16.safetensors",
        motion_module="mm_sd_v14",
    )
    request = await world.request_message(interaction)
    assert interaction.callbacks[0]["type"] == 5  # deferred at once
    assert "Queued" in request.edits[0]["content"] or "Starting" in request.edits[0]["content"]
    result = await world.result_for(request)

    attachment = result.attachments[0]
    assert attachment.data == world.api.sample
    assert attachment.filename == "animate-1234-a-red-fox-running-through-snow.mp4"
    assert result.allowed_mentions == {"parse": []}
    assert result.channel_id == CHANNEL_A
    assert labels(result) == ["Reroll", "Remix", "Delete", "Info"]
    fields = embed_fields(result)
    assert fields["Seed"] == "1234" and fields["Steps"] == "10" and fields["Guidance"] == "6.5"
    assert fields["Model"] == "Lyriel 1.6" and fields["Motion module"] == "Motion v1.4"
    assert fields["Negative prompt"] == "blurry"
    description = result.embeds[0]["description"]
    assert "/animate prompt:a red fox running through snow negative_prompt:blurry" in description
    assert "seed:1234" in description
    assert f"<@{ALICE}>" in result.content

    sent = world.api.create_bodies[0]
    assert sent["input"] == {
        "prompt": "a red fox running through snow",
        "n_prompt": "blurry",
        "path": "lyriel_v16.safetensors",
        "motion_module": "mm_sd_v14",
        "steps": 10,
        "guidance_scale": 6.5,
        "seed": 1234,
    }
    # Held one progress interval (PROGRESS_POLL_SECONDS): the fake's run ends within it.
    assert world.api.requests[0].header("Prefer") == "wait=5"
    assert world.api.creates == 1 and world.api.polls == 0

    await world.discord.wait_for(lambda: "Done" in request.content)
    assert request.components == []  # Cancel is gone once it is done
    every_write = [m for m in world.discord.messages.values() if m.author_id == 1000]
    assert all(m.allowed_mentions == {"parse": []} for m in every_write)


async def test_a_missing_seed_is_picked_and_sent_explicitly(world: World) -> None:
    interaction = await world.animate("waves", steps=5)
    result = await world.result_for(await world.request_message(interaction))
    seed = int(embed_fields(result)["Seed"])
    assert 1 <= seed <= 2_147_483_647
    assert world.api.create_bodies[0]["input"]["seed"] == seed
    assert result.attachments[0].filename == f"animate-{seed}-waves.mp4"


async def test_reroll_queues_the_same_settings_with_a_new_seed_for_the_presser(
    world: World,
) -> None:
    first = await world.result_for(
        await world.request_message(await world.animate("a comet", steps=7, seed=77))
    )
    click = await world.discord.click(first, first.button("Reroll")["custom_id"], user_id=BOB)
    second = await world.result_for(await world.request_message(click))
    assert embed_fields(second)["Seed"] != "77"
    inputs = [body["input"] for body in world.api.create_bodies]
    assert inputs[1]["prompt"] == "a comet" and inputs[1]["steps"] == 7
    assert inputs[1]["seed"] != 77
    assert f"<@{BOB}>" in second.content


async def test_remix_opens_a_prefilled_modal_and_queues_the_edit(world: World) -> None:
    first = await world.result_for(
        await world.request_message(
            await world.animate("a castle", negative_prompt="fog", steps=9, seed=555)
        )
    )
    click = await world.discord.click(first, first.button("Remix")["custom_id"], user_id=CAROL)
    modal = await world.discord.wait_for(lambda: click.modal)
    prefilled = {
        c["custom_id"]: c.get("value")
        for row in modal["components"]
        for c in ([row["component"]] if "component" in row else row.get("components", []))
    }
    assert prefilled == {
        "prompt": "a castle",
        "negative_prompt": "fog",
        "steps_and_guidance": "9, 7.5",
        "seed": "555",
        "format": None,  # a select: MP4 is its default option
    }
    del prefilled["format"]
    submit = await world.discord.submit_modal(
        click,
        {**prefilled, "prompt": "a castle at night", "steps_and_guidance": "12, 7.5"},
        user_id=CAROL,
    )
    second = await world.result_for(await world.request_message(submit))
    fields = embed_fields(second)
    assert fields["Seed"] == "555" and fields["Steps"] == "12"
    assert "a castle at night" in second.embeds[0]["description"]


async def test_remix_with_bad_values_explains_the_problem(world: World) -> None:
    first = await world.result_for(
        await world.request_message(await world.animate("a tree", steps=5, seed=3))
    )
    click = await world.discord.click(first, first.button("Remix")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: click.modal)
    submit = await world.discord.submit_modal(
        click,
        {
            "prompt": "a tree",
            "negative_prompt": "",
            "steps_and_guidance": "500, 7",
            "seed": "3",
        },
        user_id=ALICE,
    )
    await world.discord.wait_for(lambda: submit.callbacks)
    reply = submit.callbacks[0]["data"]
    assert reply["content"] == "Steps must be between 1 and 100."
    assert reply["flags"] & 64
    assert world.api.creates == 1


async def test_cancel_while_queued(world: World) -> None:
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    running = await world.request_message(await world.animate("first", steps=10))
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    queued = await world.request_message(await world.animate("second", user=BOB, steps=10))
    assert "#" in queued.content or "next" in queued.content

    refused = await world.discord.click(queued, queued.button("Cancel")["custom_id"], user_id=CAROL)
    await world.discord.wait_for(lambda: refused.callbacks)
    assert "Only the person who asked" in refused.callbacks[0]["data"]["content"]

    cancel = await world.discord.click(queued, queued.button("Cancel")["custom_id"], user_id=BOB)
    await world.discord.wait_for(lambda: "Canceled" in queued.content)
    reply = await world.discord.wait_for(lambda: cancel.original)
    assert reply.ephemeral
    await world.discord.wait_for(lambda: "removed from the queue" in reply.content)
    assert queued.components == []
    hold.set()
    await world.result_for(running)
    prompts = [body["input"]["prompt"] for body in world.api.create_bodies]
    assert prompts == ["first"]


async def test_cancel_while_running_cancels_upstream(world: World) -> None:
    world.api.next_behaviours.append(Behaviour(hold=asyncio.Event()))
    request = await world.request_message(await world.animate("a slow one", steps=20))
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    press = await world.discord.click(
        request, request.button("Cancel")["custom_id"], user_id=MODERATOR
    )
    await world.discord.wait_for(lambda: "Canceled" in request.content)
    await world.discord.wait_for(
        lambda: press.original and "asked to cancel" in press.original.content
    )
    assert world.api.latest.status == "canceled"
    assert world.api.cancels >= 1
    assert world.results() == []


async def test_a_busy_server_does_not_starve_a_quiet_one(world: World) -> None:
    hold = asyncio.Event()
    world.api.behaviour_for = lambda data: Behaviour(
        hold=hold if "busy" in data["prompt"] else None
    )
    busy = [
        await world.request_message(await world.animate(f"busy {n}", user=user, steps=5))
        for n, user in enumerate((ALICE, BOB, CAROL))
    ]
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    assert "#2" in busy[2].content
    quiet = await world.request_message(
        await world.animate("quiet", guild=GUILD_B, channel=CHANNEL_B, steps=5)
    )
    await world.result_for(quiet)  # while the busy server's first job still runs
    assert world.results(CHANNEL_A) == []
    hold.set()
    for message in busy:
        await world.result_for(message)
    assert len(world.results(CHANNEL_A)) == 3


async def test_a_member_cannot_flood_the_queue(world: World) -> None:
    world.api.behaviour_for = lambda _data: Behaviour(hold=asyncio.Event())
    for n in range(3):
        await world.request_message(await world.animate(f"p{n}", steps=5))
    refused = await world.animate("one more", steps=5)
    await world.discord.wait_for(lambda: refused.callbacks)
    assert refused.ephemeral
    assert "You already have 3 requests waiting" in refused.callbacks[0]["data"]["content"]


async def test_a_failed_prediction_tells_the_requester_and_the_queue_moves_on(
    world: World,
) -> None:
    world.api.next_behaviours.append(Behaviour(outcome="failed"))
    failing = await world.request_message(await world.animate("doomed", steps=5))
    following = await world.request_message(await world.animate("fine", user=BOB, steps=5))
    await world.discord.wait_for(lambda: "❌" in failing.content)
    assert "The animation failed: CUDA out of memory" in failing.content
    assert failing.components == []
    await world.result_for(following)


@pytest.mark.bot_env(DISCORD_GUILD_IDS="")
async def test_without_guild_ids_commands_are_synced_globally(world: World) -> None:
    commands = {c["name"]: c for c in world.discord.commands[None]}
    assert sorted(commands) == [
        "animate",
        "animate-config",
        "animate-history",
        "animate-queue",
        "animate-usage",
    ]
    # The owner's commands are shown by default only to members with Manage Server.
    assert int(commands["animate-config"]["default_member_permissions"]) == 1 << 5
    assert int(commands["animate-usage"]["default_member_permissions"]) == 1 << 5
    assert commands["animate"].get("default_member_permissions") is None
    assert not world.discord.commands.get(GUILD_A)
    options = {o["name"]: o for o in commands["animate"]["options"]}
    assert options["steps"]["min_value"] == 1 and options["steps"]["max_value"] == 100
    assert options["guidance_scale"]["min_value"] == 1.0
    assert options["guidance_scale"]["max_value"] == 10.0
    assert options["seed"]["min_value"] == 0 and options["seed"]["max_value"] == 2_147_483_647
    models = {c["name"]: c["value"] for c in options["model"]["choices"]}
    assert models["ToonYou beta 3"] == "toonyou_beta3.safetensors" and len(models) == 5
    assert len(options["motion_module"]["choices"]) == 3
    assert options["prompt"]["required"] is True
    await world.result_for(await world.request_message(await world.animate("global", steps=5)))


@pytest.mark.bot_env(PREDICTION_WAIT_SECONDS="1")
async def test_progress_is_shown_while_polling(world: World) -> None:
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    request = await world.request_message(await world.animate("progress", steps=20))
    await world.discord.wait_for(lambda: "Generating" in request.content)
    assert "steps" in request.content
    hold.set()
    await world.result_for(request)


async def test_restart_mid_prediction_delivers_exactly_once(world: World) -> None:
    hold = asyncio.Event()
    world.api.next_behaviours.append(Behaviour(hold=hold))
    request = await world.request_message(await world.animate("survivor", steps=10, seed=9))
    await world.api.wait_for(lambda: world.api.latest.status == "processing")
    assert await world.restart(signal.SIGKILL) == -signal.SIGKILL
    hold.set()
    result = await world.result_for(request)
    assert embed_fields(result)["Seed"] == "9"
    await world.discord.wait_for(lambda: "Done" in request.content)
    assert world.api.creates == 1  # found again, not paid for twice
    assert len(world.results()) == 1
    # A clean restart afterwards posts nothing more: a new request is served and the old
    # one is not posted again.
    assert await world.restart() == 0
    await world.result_for(await world.request_message(await world.animate("later", steps=5)))
    assert len(world.results()) == 2 and world.api.creates == 2


async def test_a_result_posted_just_before_a_crash_is_not_posted_again(world: World) -> None:
    request = await world.request_message(await world.animate("posted once", steps=5))
    await world.result_for(request)
    await world.discord.wait_for(lambda: "Done" in request.content)
    await world.bot.stop(signal.SIGKILL)
    # Rewind the job to where a crash between posting and recording the post leaves it.
    database = world.bot.env["DATABASE_PATH"]
    with sqlite3.connect(database) as db:
        db.execute("UPDATE jobs SET status = 'delivering', result_message_id = NULL")
    edits_before = len(request.edits)
    await world.bot.start()
    # The bot finds its post, records it, then marks the request done once more.
    await world.discord.wait_for(lambda: len(request.edits) > edits_before, timeout=30)
    with sqlite3.connect(database) as db:
        status, message_id = db.execute("SELECT status, result_message_id FROM jobs").fetchone()
    assert status == "done" and "Done" in request.content
    assert len(world.results()) == 1 and world.results()[0].id == message_id
    assert world.api.downloads == 1


async def test_buttons_work_after_a_restart(world: World) -> None:
    result = await world.result_for(
        await world.request_message(await world.animate("old result", steps=5, seed=11))
    )
    assert await world.restart() == 0
    click = await world.discord.click(result, result.button("Reroll")["custom_id"], user_id=BOB)
    rerolled = await world.result_for(await world.request_message(click))
    assert embed_fields(rerolled)["Seed"] != "11"
    await world.discord.click(result, result.button("Delete")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: result.deleted)
