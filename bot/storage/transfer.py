"""Copying a SQLite database into an empty PostgreSQL schema (`animate-bot migrate-store`).

Every table of the PostgreSQL schema is filled from the SQLite table of the same name,
column by column (the migrations of both keep the same columns), ids included, so every
button on an old result, every setting, ban and measured run means the same afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.storage.postgres import PostgresStore
from bot.storage.postgres_jobs import storable
from bot.storage.sqlite import SQLiteStore

SCHEMA_TABLE = "schema_version"


class TransferRefused(Exception):
    """The copy was not made (nothing was written); the message is one line for the operator."""


async def copy_sqlite_to_postgres(sqlite_path: Path, pool: asyncpg.Pool) -> dict[str, int]:
    """Copy every row of the SQLite file into the pool's empty schema; return rows per table.

    One transaction: either everything arrives or nothing does. A schema that already holds
    rows is refused, so a second run (or a bot already using it) cannot mix two histories.
    """
    if not await asyncio.to_thread(sqlite_path.is_file):
        raise TransferRefused(f"there is no SQLite database at {sqlite_path}")
    # Both sides at their newest schema first: every SQLite column then has its PostgreSQL twin.
    source = await SQLiteStore.open(sqlite_path)
    await source.close()
    await PostgresStore.open(pool)
    async with (
        aiosqlite.connect(f"file:{sqlite_path}?mode=ro", uri=True) as sqlite,
        pool.acquire() as target,
        target.transaction(),
    ):
        tables = await _target_tables(target)
        # A bot started on the target meanwhile waits until the copy is committed.
        names = ", ".join(f'"{table}"' for table in tables)
        await target.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
        held = {t: int(await target.fetchval(f'SELECT COUNT(*) FROM "{t}"')) for t in tables}
        if any(held.values()):
            raise TransferRefused(
                f"the target already holds data ({_counts(held)}); "
                "migrate into an empty database or schema"
            )
        source_tables = await _source_tables(sqlite)
        unknown: list[str] = []
        for table, columns in sorted(source_tables.items()):
            have = {name for name, _ in tables.get(table, [])}
            unknown += [f"{table}.{c}" for c in columns if c not in have] if have else [table]
        if unknown:
            raise TransferRefused(f"PostgreSQL has no place for {', '.join(unknown)}")
        await target.execute("SET CONSTRAINTS ALL DEFERRED")
        copied = {}
        for table, target_columns in tables.items():
            # What only PostgreSQL has (a later part's columns or tables) keeps its defaults.
            known = source_tables.get(table, [])
            if not known:
                continue  # a shared store's own table (leases, processes): nothing to copy
            columns = [(name, kind) for name, kind in target_columns if name in known]
            rows = await _read(sqlite, table, [name for name, _ in columns])
            booleans = [kind == "boolean" for _, kind in columns]
            records = [_convert(row, booleans) for row in rows]
            await target.copy_records_to_table(
                table, records=records, columns=[name for name, _ in columns]
            )
            copied[table] = len(records)
        await _continue_ids(target, tables)
    return copied


async def _target_tables(target: PoolConnectionProxy) -> dict[str, list[tuple[str, str]]]:
    """Each table of the schema but its version, with (column, type) in column order."""
    rows = await target.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name <> $1 "
        "ORDER BY table_name, ordinal_position",
        SCHEMA_TABLE,
    )
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        tables.setdefault(str(table), []).append((str(column), str(kind)))
    return tables


async def _source_tables(sqlite: aiosqlite.Connection) -> dict[str, list[str]]:
    """The SQLite file's own tables (not SQLite's bookkeeping), each with its columns."""
    rows = await sqlite.execute_fetchall(
        "SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p "
        "WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, p.cid"
    )
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(str(table), []).append(str(column))
    return tables


async def _read(sqlite: aiosqlite.Connection, table: str, columns: list[str]) -> list[Any]:
    """Every row of a SQLite table, in the given columns, in the order it was written."""
    quoted = ", ".join(f'"{column}"' for column in columns)
    try:
        return list(await sqlite.execute_fetchall(f'SELECT {quoted} FROM "{table}" ORDER BY rowid'))
    except aiosqlite.OperationalError as exc:
        mismatch = f"the SQLite table {table} does not match PostgreSQL's ({exc})"
        raise TransferRefused(mismatch) from None


def _convert(row: Sequence[Any], booleans: list[bool]) -> tuple[Any, ...]:
    """A SQLite row as PostgreSQL takes it: 0/1 flags become booleans, NULs in text U+FFFD."""
    return storable(
        tuple(
            bool(value) if is_bool and value is not None else value
            for value, is_bool in zip(row, booleans, strict=True)
        )
    )


async def _continue_ids(target: PoolConnectionProxy, tables: dict[str, Any]) -> None:
    """Move each generated id past the copied ones, so new rows never reuse an old id."""
    rows = await target.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'"
    )
    for table, column in rows:
        if table not in tables:
            continue
        highest = await target.fetchval(f'SELECT MAX("{column}") FROM "{table}"')
        await target.execute(
            "SELECT setval(pg_get_serial_sequence($1, $2), $3, false)",
            f'"{table}"',
            str(column),
            int(highest or 0) + 1,
        )


def _counts(held: dict[str, int]) -> str:
    """`3 jobs, 1 timings` for the tables that hold rows."""
    return ", ".join(f"{count} {table}" for table, count in held.items() if count)
