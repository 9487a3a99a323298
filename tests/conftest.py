"""Shared fixtures: real stores, the fake prediction API and a client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.storage.base import Store
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


class StoreClock:
    """The time a store stamps its rows with; it moves only when a test says so."""

    START = 1_699_923_600.0  # 01:00 UTC, day 19675 since the epoch

    def __init__(self) -> None:
        self.now = self.START

    def __call__(self) -> float:
        return self.now


# A factory opens an empty, migrated store that stamps every row with `clock`, using `folder`
# for any files, and closes it on exit. Every store in STORE_FACTORIES runs the contract suite
# (tests/test_store_contract.py): a second implementation is one more entry here.
StoreFactory = Callable[[Path, StoreClock], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def _sqlite_store(folder: Path, clock: StoreClock) -> AsyncIterator[Store]:
    store = await SQLiteStore.open(folder / "contract.sqlite3", clock=clock)
    try:
        yield store
    finally:
        await store.close()


STORE_FACTORIES: dict[str, StoreFactory] = {"sqlite": _sqlite_store}


@pytest.fixture
def store_clock() -> StoreClock:
    """The clock of `any_store`."""
    return StoreClock()


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, store_clock: StoreClock
) -> AsyncIterator[Store]:
    """Each Store implementation in turn, empty and migrated, on `store_clock`."""
    async with STORE_FACTORIES[request.param](tmp_path, store_clock) as store:
        yield store


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
