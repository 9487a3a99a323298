"""End to end: a server owner's settings, bans, usage, and a member's history."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time

import pytest

from tests.e2e.conftest import (
    ALICE,
    BOB,
    CHANNEL_A,
    CHANNEL_B,
    GUILD_A,
    GUILD_B,
    MODERATOR,
    World,
    labels,
)
from tests.fakes.discord import (
    CALLBACK_DEFERRED_MESSAGE,
    DEFAULT_MEMBER_PERMISSIONS,
    FakeInteraction,
)
from tests.fakes.predictions import Behaviour

MANAGE_GUILD = 1 << 5
OWNER = 900_000_000_000_000_010
CHANNEL_A2 = 810_000_000_000_000_011
CHANNEL_A3 = 810_000_000_000_000_012
EPHEMERAL = 64


async def _reply(interaction: FakeInteraction, world: World) -> str:
    """Wait for the first answer to an interaction; it must be private and ping nobody."""
    await world.discord.wait_for(lambda: interaction.callbacks)
    if interaction.callbacks[0].get("type") == CALLBACK_DEFERRED_MESSAGE:
        # Deferred ("thinking"), then the answer is edited into the private message.
        original = await world.discord.wait_for(
            lambda: (
                interaction.original
                if interaction.original and interaction.original.edits
                else None
            )
        )
        assert original.ephemeral and original.allowed_mentions == {"parse": []}
        return original.content
    data = interaction.callbacks[0].get("data") or {}
    assert int(data.get("flags") or 0) & EPHEMERAL, data
    assert data.get("allowed_mentions") == {"parse": []}
    embeds = data.get("embeds") or []
    return str(data.get("content") or "") + "".join(e.get("description", "") for e in embeds)


async def config(
    world: World, sub: str, options: dict[str, object] | None = None, *, user: int = OWNER
) -> str:
    """Run an /animate-config subcommand and return its private reply."""
    interaction = await world.discord.invoke_command(
        f"animate-config {sub}", options or {}, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=user
    )
    return await _reply(interaction, world)


async def refused(world: World, interaction: FakeInteraction) -> str:
    """The private refusal of an /animate that queued nothing."""
    text = await _reply(interaction, world)
    assert interaction.original is None or "Cancel" not in str(interaction.original.components)
    return text


async def idle(world: World, guild: int = GUILD_A) -> None:
    """Wait until the server's queue is empty (a posted result's job ends a moment later)."""
    for _ in range(100):
        interaction = await world.discord.invoke_command(
            "animate-queue", {}, guild_id=guild, channel_id=CHANNEL_A, user_id=ALICE
        )
        if "Nothing is waiting or running" in await _reply(interaction, world):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the queue never emptied")


def _owner(world: World) -> None:
    """Give guild A a member with Manage Server (but not Manage Messages)."""
    world.discord.add_member(
        GUILD_A, OWNER, name="owner", permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_GUILD
    )


def _sent_inputs(world: World) -> list[dict[str, object]]:
    """The inputs of every create the prediction API received."""
    return [p.input for p in world.api.predictions.values()]


async def test_non_admins_cannot_change_or_see_settings(world: World) -> None:
    _owner(world)
    attempts: list[tuple[str, dict[str, object]]] = [
        ("show", {}),
        ("set", {"setting": "steps", "value": "5"}),
        ("reset", {"setting": "steps"}),
        ("channel-add", {"channel": CHANNEL_A}),
        ("channel-remove", {"channel": CHANNEL_A}),
        ("block", {"pattern": "cat"}),
        ("unblock", {"pattern": "cat"}),
    ]
    for sub, options in attempts:
        # A moderator who may manage messages but not the server is refused like anyone.
        for user in (BOB, MODERATOR):
            reply = await config(world, sub, options, user=user)
            assert reply == "You need the Manage Server permission to do that.", (sub, reply)
    assert "Default steps" in await config(world, "show")
    await world.result_for(await world.request_message(await world.animate("unchanged")))
    assert _sent_inputs(world)[0]["steps"] == 25


async def test_defaults_negative_prompt_and_limits_apply_to_the_next_animate(
    world: World,
) -> None:
    _owner(world)
    changes = {
        "model": "Lyriel 1.6",
        "motion_module": "mm_sd_v14",
        "steps": "6",
        "guidance_scale": "3.5",
        "negative_prompt": "blurry, watermark",
    }
    for setting, value in changes.items():
        reply = await config(world, "set", {"setting": setting, "value": value})
        assert reply.startswith(f"Changed `{setting}`."), reply
    shown = await config(world, "show")
    assert "**Default model** (`model`): Lyriel 1.6 ✱" in shown
    assert "**Default steps** (`steps`): 6 ✱" in shown
    assert "**Results posted as spoilers** (`spoilers`): off\n" in shown  # not changed: no mark

    first = await world.request_message(await world.animate("a fox", negative_prompt="text"))
    await world.result_for(first)
    sent = _sent_inputs(world)[0]
    assert sent["path"] == "lyriel_v16.safetensors" and sent["motion_module"] == "mm_sd_v14"
    assert sent["steps"] == 6 and sent["guidance_scale"] == 3.5
    assert sent["n_prompt"] == "text, blurry, watermark"
    # Options given explicitly still win over the server's defaults.
    explicit = await world.request_message(await world.animate("a fox", steps=9))
    await world.result_for(explicit)
    assert _sent_inputs(world)[1]["steps"] == 9

    # One waiting request per member now, and two running at once for the server.
    await idle(world)
    for setting, value in {"queued_per_member": "1", "running_limit": "2"}.items():
        reply = await config(world, "set", {"setting": setting, "value": value})
        assert reply.startswith(f"Changed `{setting}`."), reply
    hold = asyncio.Event()
    world.api.behaviour_for = lambda _data: Behaviour(hold=hold)
    await world.request_message(await world.animate("held one"))
    again = await refused(world, await world.animate("held two"))
    assert again.startswith("You already have 1 request waiting in this server")
    await world.request_message(await world.animate("bob's", user=BOB))
    await world.api.wait_for(
        lambda: sum(p.status == "processing" for p in world.api.predictions.values()) == 2
    )
    hold.set()
    await world.discord.wait_for(lambda: len(world.results()) == 4, timeout=30)

    # Other servers keep the defaults; a reset brings this one back to them.
    await world.result_for(
        await world.request_message(await world.animate("b", guild=GUILD_B, channel=CHANNEL_B))
    )
    assert _sent_inputs(world)[-1]["steps"] == 25
    assert "`steps` is back to its default." in await config(world, "reset", {"setting": "steps"})
    await world.result_for(await world.request_message(await world.animate("after reset")))
    assert _sent_inputs(world)[-1]["steps"] == 25


async def test_values_are_validated_with_clear_errors(world: World) -> None:
    _owner(world)
    cases = {
        ("steps", "0"): "Steps must be a whole number from 1 to 100.",
        ("steps", "many"): "Steps must be a whole number from 1 to 100.",
        ("guidance_scale", "nan"): "Guidance scale must be a number from 1 to 10.",
        ("model", "sdxl"): "Unknown model; choose one of: ToonYou beta 3,",
        ("spoilers", "maybe"): "Write on or off.",
        ("running_limit", "0"): "The running limit must be a whole number from 1 to 50.",
        ("negative_prompt", "x" * 501): "at most 500 characters",
    }
    for (setting, value), expected in cases.items():
        reply = await config(world, "set", {"setting": setting, "value": value})
        assert expected in reply, (setting, reply)
    assert (await config(world, "show")).count("✱") == 1  # only in the heading
    assert "needs at least one letter" in await config(world, "block", {"pattern": "**"})
    assert "not in the list" in await config(world, "channel-remove", {"channel": CHANNEL_A})


async def test_channels_blocked_patterns_spoilers_and_age_restriction(world: World) -> None:
    _owner(world)
    await world.discord.add_channel(GUILD_A, CHANNEL_A2, nsfw=True)

    # Channels: once one is listed, /animate works only there.
    assert "Added <#" in await config(world, "channel-add", {"channel": CHANNEL_A2})
    text = await refused(world, await world.animate("a fox"))
    assert text == f"Animations can be made only in these channels of this server: <#{CHANNEL_A2}>."
    await world.result_for(
        await world.request_message(await world.animate("a fox", channel=CHANNEL_A2))
    )
    assert "Removed" in await config(world, "channel-remove", {"channel": CHANNEL_A2})

    # Blocked patterns: refused without naming the pattern, whatever the case or spacing.
    await config(world, "block", {"pattern": "gor*"})
    for prompt in ("so much GORE here", "gory\u200b scene"):
        text = await refused(world, await world.animate(prompt))
        assert text == "This prompt is not allowed in this server; please try a different one."
    await world.result_for(await world.request_message(await world.animate("a peaceful zoo")))
    assert "Unblocked" in await config(world, "unblock", {"pattern": "GOR*"})

    # Spoilers: the next result's file is hidden.
    await config(world, "set", {"setting": "spoilers", "value": "on"})
    result = await world.result_for(await world.request_message(await world.animate("a secret")))
    assert result.attachments[0].filename.startswith("SPOILER_")

    # Age-restricted channels only.
    await config(world, "set", {"setting": "age_restricted_only", "value": "yes"})
    text = await refused(world, await world.animate("a fox"))
    assert text == "In this server, animations can be made only in age-restricted channels."
    await world.result_for(
        await world.request_message(await world.animate("a fox", channel=CHANNEL_A2))
    )


def _used_earlier(world: World, seconds: float, prediction_id: str) -> None:
    """Record a request of Bob's made today that ran for `seconds` as `prediction_id`."""
    with contextlib.closing(sqlite3.connect(world.bot.env["DATABASE_PATH"])) as db:
        db.execute(
            "INSERT INTO jobs (guild_id, channel_id, requester_id, input_json, seed, status, "
            "prediction_id, predict_time, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, 1, 'done', ?, ?, ?, ?)",
            (
                GUILD_A,
                CHANNEL_A,
                BOB,
                json.dumps({"prompt": "x", "seed": 1}),
                prediction_id,
                seconds,
                time.time(),
                0,
            ),
        )
        db.commit()


async def test_the_daily_gpu_budget_stops_new_requests(world: World) -> None:
    _owner(world)
    await world.result_for(await world.request_message(await world.animate("warm-up")))
    await config(world, "set", {"setting": "daily_gpu_seconds", "value": "300"})
    # 400 s on the bot's own GPU (free at the default COG_PRICE_PER_GPU_SECOND): not counted.
    _used_earlier(world, 400, "cog:gpu-a:job-90-r0")
    await world.result_for(await world.request_message(await world.animate("free", user=ALICE)))
    # 300 s on Replicate (as if made earlier by another member): the paid budget is spent.
    _used_earlier(world, 300, "replicate-prediction-91")
    text = await refused(world, await world.animate("one more", user=ALICE))
    assert text.startswith("This server has used its 300 GPU seconds for today, so nothing more")
    assert "(midnight UTC)" in text
    # Another server has its own budget.
    await world.result_for(
        await world.request_message(await world.animate("b", guild=GUILD_B, channel=CHANNEL_B))
    )

    usage = await _reply(
        await world.discord.invoke_command(
            "animate-usage", {}, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=OWNER
        ),
        world,
    )
    assert "Total: 4 predictions · 70" in usage
    assert "$0.000725 per GPU second on Replicate and nothing on your own GPUs)" in usage
    assert "· own GPUs 400.0 s (free)\nToday: Replicate 30" in usage
    assert "The daily budget counts only paid seconds: 30" in usage
    assert "of the 300 GPU seconds the server may use per day" in usage
    assert f"<@{BOB}> · 2 · Replicate 300.0 s $0.22 · own 400.0 s\n" in usage  # at $0.000725
    denied = await _reply(
        await world.discord.invoke_command(
            "animate-usage", {}, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB
        ),
        world,
    )
    assert denied == "You need the Manage Server permission to do that."


async def test_daily_requests_per_member_and_the_remaining_count(world: World) -> None:
    _owner(world)
    await config(world, "set", {"setting": "daily_requests_per_member", "value": "2"})
    for left in (1, 0):
        interaction = await world.animate("a fox")
        await world.result_for(await world.request_message(interaction))
        await world.discord.wait_for(lambda i=interaction: i.followups)
        note = interaction.followups[0]
        assert note.ephemeral
        plural = "request" if left == 1 else "requests"
        assert note.content.startswith(f"You have {left} {plural} left today in this server")
    text = await refused(world, await world.animate("a third fox"))
    assert text.startswith("You have used your 2 requests for today in this server; more open <t:")
    # Bob has his own count.
    await world.result_for(await world.request_message(await world.animate("bob", user=BOB)))


async def test_moderators_ban_and_unban_members(world: World) -> None:
    _owner(world)
    # Manage Server alone is not enough: banning is moderation (Manage Messages).
    assert "Manage Messages permission" in await config(world, "ban", {"member": BOB})
    assert "Manage Messages permission" in await config(world, "ban", {"member": BOB}, user=ALICE)
    reply = await config(world, "ban", {"member": BOB}, user=MODERATOR)
    assert reply == f"Banned <@{BOB}> from the bot in this server; they had no queued requests."
    again = await config(world, "ban", {"member": BOB}, user=MODERATOR)
    assert again == f"<@{BOB}> was already banned from the bot here."
    text = await refused(world, await world.animate("bob's fox", user=BOB))
    assert text == "You are not allowed to use the animation bot in this server."
    # The ban is per server, and survives a restart.
    await world.result_for(
        await world.request_message(
            await world.animate("elsewhere", user=BOB, guild=GUILD_B, channel=CHANNEL_B)
        )
    )
    assert await world.restart() == 0
    text = await refused(world, await world.animate("bob's fox", user=BOB))
    assert text == "You are not allowed to use the animation bot in this server."
    reply = await config(world, "unban", {"member": BOB}, user=MODERATOR)
    assert reply == f"<@{BOB}> may make animations in this server again."
    await world.result_for(await world.request_message(await world.animate("back", user=BOB)))
    assert await config(world, "unban", {"member": MODERATOR}, user=MODERATOR) == (
        "You cannot lift your own ban."
    )


@pytest.mark.bot_env(DEFAULT_STEPS="7", MAX_REQUESTS_PER_MEMBER_PER_DAY="5")
async def test_defaults_for_a_new_server_come_from_the_environment(world: World) -> None:
    _owner(world)
    shown = await config(world, "show")
    assert "**Default steps** (`steps`): 7\n" in shown
    assert "(`daily_requests_per_member`): 5 requests\n" in shown
    await world.result_for(await world.request_message(await world.animate("env")))
    assert _sent_inputs(world)[0]["steps"] == 7


async def test_history_pages_and_runs_again_without_deleted_results(world: World) -> None:
    results = []
    for index in range(7):
        request = await world.request_message(
            await world.animate(f"fox {index}", seed=100 + index, steps=5)
        )
        results.append(await world.result_for(request))
    # A deleted result leaves the history.
    await world.discord.click(results[6], results[6].button("Delete")["custom_id"], user_id=ALICE)
    await world.job_reaches(job_id=7, deleted=1)
    await world.result_for(await world.request_message(await world.animate("bob's", user=BOB)))

    interaction = await world.discord.invoke_command(
        "animate-history", {}, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
    )
    text = await _reply(interaction, world)
    page = interaction.original
    assert page is not None
    lines = text.split("\n")
    assert len(lines) == 6 and "fox 6" not in text and "bob's" not in text
    assert lines[1].startswith("**1.** fox 5 · seed `105` · 5 steps · done · <t:")
    assert lines[5].startswith("**5.** fox 1 · seed `101`")
    with pytest.raises(AssertionError):
        page.button("Newer")

    older = await world.discord.click(page, page.button("Older")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: older.callbacks)
    assert "**1.** fox 0 · seed `100`" in page.content and "fox 1" not in page.content
    newer = await world.discord.click(page, page.button("Newer")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: newer.callbacks)
    assert "**1.** fox 5" in page.content

    # Run again: the same request and seed, queued for its owner; not for anyone else.
    again_id = page.button("Run again 2")["custom_id"]
    stranger = await world.discord.click(page, again_id, user_id=BOB)
    assert "Only the person who made it" in await _reply(stranger, world)
    rerun = await world.discord.click(page, again_id, user_id=ALICE)
    await world.result_for(await world.request_message(rerun))
    assert _sent_inputs(world)[-1]["prompt"] == "fox 4" and _sent_inputs(world)[-1]["seed"] == 104


@pytest.mark.bot_env(MAX_QUEUED_PER_MEMBER="4")
async def test_a_ban_cancels_the_members_queued_requests_and_lets_the_running_one_finish(
    world: World,
) -> None:
    hold = asyncio.Event()
    world.api.behaviour_for = lambda _data: Behaviour(hold=hold)
    running = await world.request_message(await world.animate("bob 0", user=BOB))
    await world.api.wait_for(
        lambda: any(p.status == "processing" for p in world.api.predictions.values())
    )
    queued = [
        await world.request_message(await world.animate(f"bob {n}", user=BOB)) for n in (1, 2)
    ]
    alice = await world.request_message(await world.animate("alice's", user=ALICE))
    queued.append(await world.request_message(await world.animate("bob 3", user=BOB)))

    reply = await config(world, "ban", {"member": BOB}, user=MODERATOR)
    assert reply == (
        f"Banned <@{BOB}> from the bot in this server; their 3 queued requests were canceled. "
        "Their request already running will still finish."
    )
    reason = "Canceled: the requester was banned from using the bot in this server."
    for message in queued:
        await world.discord.wait_for(lambda m=message: m.content.endswith(f"\n🚫 {reason}"))
        assert "Cancel" not in labels(message)
        assert message.allowed_mentions == {"parse": []}
    for job_id in (2, 3, 5):  # Bob's queued ones; Alice's is job 4
        assert (await world.job_reaches("canceled", job_id=job_id))["error"] == reason
    # Alice moved up past Bob's canceled requests (she was #3): she is next now.
    await world.discord.wait_for(lambda: "Queued: next in this server's queue" in alice.content)

    hold.set()
    await world.result_for(running)
    await world.result_for(alice)
    await world.job_reaches("done", job_id=1)
    assert sorted(str(sent["prompt"]) for sent in _sent_inputs(world)) == ["alice's", "bob 0"]


def _stored_channels(world: World) -> list[int] | None:
    """The allowed-channel list of guild A as stored in the bot's database (None: not set)."""
    with contextlib.closing(sqlite3.connect(world.bot.env["DATABASE_PATH"])) as db:
        row = db.execute(
            "SELECT value_json FROM guild_settings WHERE guild_id = ? AND name = 'channel_ids'",
            (GUILD_A,),
        ).fetchone()
    return None if row is None else [int(c) for c in json.loads(row[0])]


async def _stored_channels_become(world: World, expected: list[int] | None) -> None:
    """Wait until the bot (another process) has stored this channel list."""
    async with asyncio.timeout(10):
        while True:
            if _stored_channels(world) == expected:
                return
            # The database belongs to another process: nothing to wait on but the file.
            await asyncio.sleep(0.05)


async def test_a_deleted_channel_leaves_the_allowed_list(world: World) -> None:
    _owner(world)
    await world.discord.add_channel(GUILD_A, CHANNEL_A2)
    await world.discord.add_channel(GUILD_A, CHANNEL_A3)
    for channel in (CHANNEL_A2, CHANNEL_A3):
        assert "Added <#" in await config(world, "channel-add", {"channel": channel})
    assert _stored_channels(world) == [CHANNEL_A2, CHANNEL_A3]

    # Discord reports A2 deleted: it leaves the stored list, and refusals name only A3.
    await world.discord.delete_channel(CHANNEL_A2)
    await _stored_channels_become(world, [CHANNEL_A3])
    assert str(CHANNEL_A2) not in await config(world, "show")
    text = await refused(world, await world.animate("a fox"))
    assert text == f"Animations can be made only in these channels of this server: <#{CHANNEL_A3}>."

    # The last one goes: the list is empty again, so /animate works in any channel.
    await world.discord.delete_channel(CHANNEL_A3)
    await _stored_channels_become(world, None)
    assert "**Channels**: every channel\n" in await config(world, "show")
    await world.result_for(await world.request_message(await world.animate("a fox")))


async def test_a_channel_deleted_while_the_bot_was_away_no_longer_counts(world: World) -> None:
    _owner(world)
    await world.discord.add_channel(GUILD_A, CHANNEL_A2)
    assert "Added <#" in await config(world, "channel-add", {"channel": CHANNEL_A2})
    assert await world.bot.stop() == 0
    await world.discord.delete_channel(CHANNEL_A2)  # no bot connected to hear it
    await world.start_again()

    # Still stored (no one said it went), but marked and ignored: every channel is allowed.
    assert _stored_channels(world) == [CHANNEL_A2]
    shown = await config(world, "show")
    assert f"<#{CHANNEL_A2}> (deleted)" in shown
    assert "none of them exists any more, so /animate works in every channel" in shown
    await world.result_for(await world.request_message(await world.animate("a fox")))
