"""Shared fixtures: a real SQLite store, the fake prediction API and a client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import FakePredictionAPI
from tests.scheduling import RecordingReporter


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A migrated store in a temp file."""
    store = await SQLiteStore.open(tmp_path / "jobs.sqlite3")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def prediction_api() -> AsyncIterator[FakePredictionAPI]:
    """The fake prediction API on 127.0.0.1."""
    api = FakePredictionAPI()
    await api.start()
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP session, as the bot has."""
    async with aiohttp.ClientSession() as session:
        yield session


async def _no_sleep(_seconds: float) -> None:
    """Backoff that does not wait, for tests of retry counts."""


@pytest.fixture
def client(http: aiohttp.ClientSession, prediction_api: FakePredictionAPI) -> PredictionClient:
    """The real prediction client pointed at the fake API, with instant backoff."""
    return PredictionClient(
        http,
        base_url=prediction_api.base_url,
        token=prediction_api.token,
        version=prediction_api.version,
        sleep=_no_sleep,
    )


@pytest.fixture
def reporter() -> RecordingReporter:
    """The Discord side of the scheduler, as a record of what it was told."""
    return RecordingReporter()
