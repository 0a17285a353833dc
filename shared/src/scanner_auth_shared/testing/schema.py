"""The one source of a service's schema, checked: its SQLModel tables (`adapters/tables.py`)
against what its migrations build, and every SQL statement of its repositories against the
migrated database (PostgreSQL prepares each one: a column or table that is not there fails).

Used by each service's `tests/test_schema.py`:

    async def test_the_migrations_build_the_tables_the_models_declare(database_url):
        await assert_migrations_match_models(database_url, MIGRATIONS, Base.metadata)

    async def test_every_statement_prepares_against_the_migrated_schema(database_url):
        await assert_statements_prepare(database_url, MIGRATIONS, statements_of(postgres))
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ..migrations import upgrade
from ..postgres import asyncpg_dsn

_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


def statements_of(*modules: ModuleType) -> dict[str, str]:
    """Every module-level string constant of `modules` that is an SQL statement, by name."""
    found: dict[str, str] = {}
    for module in modules:
        for name, value in vars(module).items():
            constant = name.lstrip("_").isupper()
            if constant and isinstance(value, str) and _SQL.match(value):
                found[f"{module.__name__}.{name}"] = value
    return found


async def assert_migrations_match_models(
    database_url: str,
    migrations: Path,
    metadata: MetaData,
    *,
    ignore: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> None:
    """Migrate an empty database, then compare it with `metadata` (alembic's autogenerate
    comparison: tables, columns, types, nullability, indexes, unique constraints). `ignore`:
    tables the models do not declare (the shared outbox and processed-event tables are
    compared by tests/deploy/test_migrations.py, with `only`: just those tables)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    await upgrade(database_url, migrations)
    skipped = {"alembic_version", *ignore}
    wanted = None if only is None else set(only)

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, _: Any) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        table_name = getattr(table, "name", name)
        return table_name not in skipped and (wanted is None or table_name in wanted)

    def compare(connection: Any) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": False,
                "include_object": include_object,
            },
        )
        return list(compare_metadata(context, metadata))

    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(compare)
    finally:
        await engine.dispose()
    assert differences == [], (
        "the migrations and the models disagree (alembic's diff, models vs database):\n"
        + "\n".join(map(repr, differences))
    )


async def assert_statements_prepare(
    database_url: str, migrations: Path, statements: dict[str, str]
) -> None:
    """Migrate, then PREPARE every statement: each must name tables, columns and types that
    exist, with parameters PostgreSQL can type."""
    assert statements, "no statement found: is the module the right one?"
    await upgrade(database_url, migrations)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    failures = []
    try:
        for name, sql in statements.items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        await conn.close()
    assert not failures, "statements that do not fit the schema:\n" + "\n".join(failures)
