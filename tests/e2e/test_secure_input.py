"""End to end: hostile prompts ping no one and stay within limits; tokens never leak."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import ALICE, World
from tests.fakes.predictions import Behaviour

HOSTILE_PIECES = (
    "@everyone @here <@900000000000000002> <@&810000000000000009> "
    "**bold** __under__ ~~strike~~ ||spoiler|| > quote # heading [link](https://e.com) "
    "```\ncode fence\n``` `tick` "
    "\u200b\u200c\u200d\u2060\ufeff \u202e\u2066reversed\u2069\u202c \u200f"
)


def hostile(length: int) -> str:
    """A prompt of exactly `length` characters made of mentions, markdown and invisibles."""
    text = (HOSTILE_PIECES * (length // len(HOSTILE_PIECES) + 1))[:length]
    return "x" + text[1:-1] + "y"  # visible at both ends, so nothing is trimmed away


def written_bodies(world: World) -> list[dict[str, Any]]:
    """Every message body the bot sent to Discord: posts, edits, replies, follow-ups."""
    bodies: list[dict[str, Any]] = []
    for request in world.discord.requests:
        body = request.json
        if request.method not in ("POST", "PATCH") or not isinstance(body, dict):
            continue
        if "type" in body and "data" in body:  # an interaction callback
            body = body["data"] or {}
        if "content" in body or "embeds" in body:
            bodies.append(body)
    return bodies


async def test_a_max_length_hostile_prompt_posts_pings_no_one_and_is_shortened_visibly(
    world: World,
) -> None:
    prompt, negative = hostile(1000), hostile(1000)
    interaction = await world.animate(prompt, negative_prompt=negative, steps=4, seed=99)
    request = await world.request_message(interaction)
    result = await world.result_for(request)
    await world.discord.wait_for(lambda: "Done" in request.content)

    assert result.attachments and result.attachments[0].data == world.api.sample
    sent = world.api.create_bodies[0]["input"]
    assert sent["prompt"] == prompt and sent["n_prompt"] == negative  # sent on unchanged

    bodies = written_bodies(world)
    assert len(bodies) >= 3  # the status message, its edits and the result
    for body in bodies:
        assert body.get("allowed_mentions") == {"parse": []}, body
    for message in world.discord.messages.values():
        texts = [message.content] + [
            str(value) for embed in message.embeds for value in _embed_texts(embed)
        ]
        for text in texts:
            assert not set(text) & set("\u200b\u200c\u200d\u2060\ufeff\u202e\u2066\u2069\u200f")
        # Only the requester is named; the prompt's mentions are escaped text.
        assert message.content.count("<@") == 1 and f"<@{ALICE}>" in message.content, message
        assert "@everyone" not in message.content.replace("\\@everyone", "")

    embed = result.embeds[0]
    description = embed["description"]
    prompt_shown, _, reproduce = description.partition("\n\n**Reproduce**\n```\n")
    # Shown whole (every mark escaped), or visibly cut where escaping made it too long.
    visible = " ".join(
        prompt.translate(
            {ord(c): None for c in "\u200b\u200c\u200d\u2060\ufeff\u202e\u2066\u2069\u202c\u200f"}
        ).split()
    )
    unescaped = re.sub(r"\\(.)", r"\1", prompt_shown)
    assert unescaped == visible or (unescaped.endswith("…") and visible.startswith(unescaped[:-1]))
    assert "\\<\\@&810000000000000009\\>" in prompt_shown and "\\@everyone" in prompt_shown
    # The status message has room for 300 characters of the prompt: visibly cut there.
    status_prompt = request.content.split("\n> ", 1)[1].split("\n", 1)[0]
    assert status_prompt.endswith("…") and len(status_prompt) <= 300
    assert reproduce.endswith("\n```") and "`" not in reproduce.removesuffix("\n```")
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Negative prompt"].endswith("…") and len(fields["Negative prompt"]) <= 1024
    assert len(description) <= 4096
    total = len(embed.get("title", "")) + len(description) + len(embed["footer"]["text"])
    total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000
    assert "seed:99" in reproduce


def _embed_texts(embed: dict[str, Any]) -> list[str]:
    """Every text of an embed."""
    texts = [embed.get("title", ""), embed.get("description", "")]
    texts += [embed.get("footer", {}).get("text", "")]
    for field in embed.get("fields", []):
        texts += [field["name"], field["value"]]
    return texts


@pytest.mark.bot_env(LOG_LEVEL="DEBUG")
async def test_the_tokens_never_reach_the_log_or_the_members(world: World) -> None:
    discord_token, api_token = world.discord.token, world.api.token
    ok = await world.result_for(await world.request_message(await world.animate("a fox")))
    assert ok.attachments

    # A model that echoes its environment in its error message.
    world.api.next_behaviours.append(
        Behaviour(
            outcome="failed",
            error=(
                f"crashed with DISCORD_TOKEN={discord_token} "
                f"REPLICATE_API_TOKEN={api_token} Authorization: Bearer {api_token}"
            ),
        )
    )
    failing = await world.request_message(await world.animate("a failing fox"))
    await world.discord.wait_for(lambda: "❌" in failing.content)
    assert "crashed with" in failing.content
    for message in world.discord.messages.values():
        seen = message.content + repr(message.embeds)
        assert discord_token not in seen and api_token not in seen

    await world.bot.stop()
    log = world.bot.log()
    assert " DEBUG " in log and "job" in log and "failed" in log
    assert discord_token not in log
    assert api_token not in log
    assert "[redacted]" in log  # the failure was logged, masked
