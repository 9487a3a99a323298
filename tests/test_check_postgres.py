"""`animate-bot check` on a DATABASE_URL: migrated and writable, or one line on why not."""

from __future__ import annotations

from bot.app.check import Outcome, check_postgres
from bot.storage.postgres_migrations import MIGRATIONS
from tests.postgres_server import fresh_schema, refused_port


async def test_a_reachable_database_is_migrated_and_proved_writable() -> None:
    async with fresh_schema() as url:
        result = await check_postgres(url)
    assert result.outcome is Outcome.OK
    assert result.detail.startswith("PostgreSQL at 127.0.0.1:")
    assert result.detail.endswith(f", schema version {len(MIGRATIONS)}, writable")


async def test_an_unreachable_database_fails_the_check_with_its_address() -> None:
    with refused_port() as port:
        result = await check_postgres(f"postgresql://bot:pw-x@127.0.0.1:{port}/animate")
    assert result.outcome is Outcome.FAIL
    assert result.detail.startswith(f"could not connect to PostgreSQL at 127.0.0.1:{port}/animate")
    assert "pw-x" not in result.detail
