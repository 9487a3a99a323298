"""Shared fixtures: real stores, the fake prediction API and a client on it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from bot.backends.replicate import PredictionClient
from bot.core import redaction
from bot.storage.base import Store
from bot.storage.postgres import PostgresStore, create_pool
from bot.storage.sqlite import SQLiteStore
from tests.fakes.predictions import FakePredictionAPI
from tests.postgres_server import fresh_schema
from tests.scheduling import RecordingReporter


@asynccontextmanager
async def opened_store(
    path: Path, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[SQLiteStore]:
    """The SQLite store on `path`, migrated, closed at the end of the block."""
    store = await SQLiteStore.open(path, clock=clock)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """The file of `store`: a test may open it again, as a restarted bot would."""
    return tmp_path / "jobs.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    """A migrated store in a temp file."""
    async with opened_store(db_path) as store:
        yield store


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
    async with opened_store(folder / "contract.sqlite3", clock=clock) as store:
        yield store


@asynccontextmanager
async def _postgres_store(_folder: Path, clock: StoreClock) -> AsyncIterator[Store]:
    async with fresh_schema() as url:
        pool = await create_pool(url, size=2)
        try:
            yield await PostgresStore.open(pool, clock=clock)
        finally:
            await pool.close()


STORE_FACTORIES: dict[str, StoreFactory] = {
    "sqlite": _sqlite_store,
    "postgres": _postgres_store,
}

# A pair factory opens one database twice: the store under test, and a second store of its
# own (own connections) on the same data, which sees only what the first has committed.
StorePairFactory = Callable[[Path, StoreClock], AbstractAsyncContextManager[tuple[Store, Store]]]


@asynccontextmanager
async def _sqlite_pair(folder: Path, clock: StoreClock) -> AsyncIterator[tuple[Store, Store]]:
    path = folder / "contract.sqlite3"
    async with opened_store(path, clock=clock) as store, opened_store(path) as reader:
        yield store, reader


@asynccontextmanager
async def _postgres_pair(_folder: Path, clock: StoreClock) -> AsyncIterator[tuple[Store, Store]]:
    async with fresh_schema() as url:
        pool = await create_pool(url, size=2)
        try:
            reader_pool = await create_pool(url, size=1)
            try:
                store = await PostgresStore.open(pool, clock=clock)
                yield store, await PostgresStore.open(reader_pool)
            finally:
                await reader_pool.close()
        finally:
            await pool.close()


STORE_PAIR_FACTORIES: dict[str, StorePairFactory] = {
    "sqlite": _sqlite_pair,
    "postgres": _postgres_pair,
}

AnyStore = TypeVar("AnyStore", bound=Store)

# A registered secret and two bearer tokens, in the reasons end_with_secret_reasons() stores.
SECRET_IN_REASONS = "r8_registered-secret-value"
LEAKS_IN_REASONS = (SECRET_IN_REASONS, "xyz987abc", "qwe456rty")


async def end_with_secret_reasons(
    store: AnyStore, add: Callable[[AnyStore], Awaitable[int]]
) -> tuple[int, int, int]:
    """Jobs made by `add`, failed and canceled with LEAKS_IN_REASONS in their reasons, and one
    canceled without a reason: (failed, canceled, untold). The secret is forgotten on return."""
    secret = SECRET_IN_REASONS
    redaction.register_secret(secret)
    try:
        failed = await add(store)
        await store.mark_failed(
            failed, f"The service said: token {secret} refused; Authorization: Bearer xyz987abc"
        )
        canceled = await add(store)
        await store.mark_canceled(canceled, f"stopped (key {secret}, Bearer qwe456rty)")
        untold = await add(store)
        await store.mark_canceled(untold)
    finally:
        redaction.forget_secrets()
    return failed, canceled, untold


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


@pytest.fixture(params=sorted(STORE_PAIR_FACTORIES))
async def any_store_and_reader(
    request: pytest.FixtureRequest, tmp_path: Path, store_clock: StoreClock
) -> AsyncIterator[tuple[Store, Store]]:
    """Each Store implementation in turn, with a second store reading the same database."""
    async with STORE_PAIR_FACTORIES[request.param](tmp_path, store_clock) as pair:
        yield pair


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
