"""The redeemer's schema has one source, its SQLModel tables: the migrations build exactly them,
and every statement of its repositories prepares against what the migrations built."""

from __future__ import annotations

import pytest

from redeemer.adapters import postgres
from redeemer.adapters.tables import Base
from redeemer.app import MIGRATIONS
from scanner_auth_shared.tables import MESSAGING_TABLES
from scanner_auth_shared.testing.schema import (
    assert_migrations_match_models,
    assert_statements_prepare,
    statements_of,
)

pytestmark = pytest.mark.integration


async def test_the_migrations_build_the_tables_the_models_declare(database_url: str) -> None:
    await assert_migrations_match_models(
        database_url, MIGRATIONS, Base.metadata, ignore=MESSAGING_TABLES
    )


async def test_every_statement_prepares_against_the_migrated_schema(database_url: str) -> None:
    statements = statements_of(postgres)
    assert len(statements) >= 20, sorted(statements)
    await assert_statements_prepare(database_url, MIGRATIONS, statements)
