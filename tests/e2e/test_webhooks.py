"""Webhooks end to end: the real bot listens, asks for pushes, and delivers without polling."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.conftest import World


def free_port() -> int:
    """A port nothing listens on now, for the bot's webhook listener."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PORT = free_port()
PUBLIC_URL = f"http://127.0.0.1:{PORT}/hooks/replicate"


@pytest.mark.bot_env(
    PUBLIC_WEBHOOK_URL=PUBLIC_URL, WEBHOOK_LISTEN_HOST="127.0.0.1", WEBHOOK_LISTEN_PORT=str(PORT)
)
async def test_with_a_public_webhook_url_results_are_pushed_not_polled(world: World) -> None:
    request = await world.request_message(await world.animate("paper boats", steps=5, seed=3))
    result = await world.result_for(request)
    assert result.attachments and result.attachments[0].data == world.api.sample
    api = world.api
    assert api.create_bodies[0]["webhook"] == PUBLIC_URL
    assert api.create_bodies[0]["webhook_events_filter"] == ["logs", "completed"]
    assert (api.create_requests, api.polls, api.downloads) == (1, 0, 1)
    completed = [d for d in api.webhook_deliveries if d.event == "completed"]
    assert [d.answers[-1] for d in completed] == [200]
    assert "listening for prediction webhooks" in world.bot.log()
