"""Issue 4: outputs always fit the server's limit, MP4 or GIF on request, and say what made them."""

from __future__ import annotations

import json
from pathlib import Path

from bot import media
from tests.e2e.conftest import ALICE, BOB, GUILD_A, World, labels
from tests.fakes.discord import FakeMessage

SAMPLE_FRAMES, SAMPLE_SIZE = 48, (512, 512)  # the real model output in tests/data


async def probe_attachment(message: FakeMessage, tmp_path: Path) -> media.VideoInfo:
    """Write a posted attachment to disk and read its frames and size."""
    attachment = message.attachments[0]
    path = tmp_path / attachment.filename
    path.write_bytes(attachment.data)
    return await media.probe(path)


async def test_an_output_over_the_limit_is_re_encoded_to_fit(world: World, tmp_path: Path) -> None:
    limit = 400_000  # the 2.1 MB sample must shrink to a fifth
    world.discord.set_upload_limit(GUILD_A, limit)
    request = await world.request_message(await world.animate("cherry blossoms", steps=5, seed=9))
    result = await world.result_for(request, timeout=60)
    attachment = result.attachments[0]
    assert len(attachment.data) <= limit < len(world.api.sample)
    assert attachment.filename == "animate-9-cherry-blossoms.mp4"
    info = await probe_attachment(result, tmp_path)
    assert info.frames == SAMPLE_FRAMES
    assert info.width / info.height == SAMPLE_SIZE[0] / SAMPLE_SIZE[1]


async def test_an_output_that_cannot_fit_is_explained_not_attached(world: World) -> None:
    world.discord.set_upload_limit(GUILD_A, 3_000)
    request = await world.request_message(await world.animate("huge", steps=5, seed=8))
    result = await world.result_for(request, timeout=60)
    assert result.attachments == []
    assert "does not fit this server's 3 KiB upload limit" in result.content
    fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
    assert fields["Seed"] == "8"
    assert labels(result) == ["Reroll", "Remix", "Delete", "Info"]


async def test_a_gif_loops_keeps_every_frame_and_reroll_keeps_the_format(
    world: World, tmp_path: Path
) -> None:
    request = await world.request_message(
        await world.animate("spinning top", steps=5, seed=21, format="gif")
    )
    result = await world.result_for(request, timeout=60)
    attachment = result.attachments[0]
    assert attachment.filename == "animate-21-spinning-top.gif"
    assert (
        attachment.data.startswith(b"GIF89a") and b"NETSCAPE2.0\x03\x01\x00\x00" in attachment.data
    )
    info = await probe_attachment(result, tmp_path)
    assert (info.frames, (info.width, info.height)) == (SAMPLE_FRAMES, SAMPLE_SIZE)
    assert "format:GIF" in result.embeds[0]["description"]

    click = await world.discord.click(result, result.button("Reroll")["custom_id"], user_id=BOB)
    rerolled = await world.result_for(await world.request_message(click), timeout=60)
    assert rerolled.attachments[0].filename.endswith(".gif")
    assert rerolled.attachments[0].data.startswith(b"GIF89a")


async def test_remix_can_switch_the_format(world: World) -> None:
    first = await world.result_for(
        await world.request_message(await world.animate("a kite", steps=5, seed=5))
    )
    click = await world.discord.click(first, first.button("Remix")["custom_id"], user_id=ALICE)
    await world.discord.wait_for(lambda: click.modal)
    submit = await world.discord.submit_modal(click, {"format": ["gif"]}, user_id=ALICE)
    second = await world.result_for(await world.request_message(submit), timeout=60)
    assert second.attachments[0].filename == "animate-5-a-kite.gif"


async def test_info_shows_every_setting_as_json_to_the_presser(world: World) -> None:
    result = await world.result_for(
        await world.request_message(
            await world.animate("a `fenced` lamp", negative_prompt="smoke", steps=6, seed=33)
        )
    )
    info = await world.discord.click(result, result.button("Info")["custom_id"], user_id=BOB)
    await world.discord.wait_for(lambda: info.callbacks)
    assert info.ephemeral
    description = info.callbacks[0]["data"]["embeds"][0]["description"]
    assert description.startswith("```json\n") and description.endswith("\n```")
    settings = json.loads(description.removeprefix("```json\n").removesuffix("\n```"))
    assert settings["input"] == world.api.create_bodies[0]["input"]
    assert settings["input"]["prompt"] == "a `fenced` lamp"
    assert settings["version"] == world.api.version and settings["format"] == "mp4"
    assert settings["prediction_id"] == world.api.latest.id
    fields = {field["name"]: field["value"] for field in result.embeds[0]["fields"]}
    assert world.api.version.startswith(fields["Version"])
    assert "on GPU" in fields["Time"]


async def test_the_format_option_is_declared_with_its_choices(world: World) -> None:
    command = world.discord.commands[GUILD_A][0]
    option = next(o for o in command["options"] if o["name"] == "format")
    assert [c["value"] for c in option["choices"]] == ["mp4", "gif"]
    assert not option.get("required")
