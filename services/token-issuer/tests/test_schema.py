"""The schema has one source, the SQLModel tables (adapters/tables.py): the migrations build
exactly them, and every statement of adapters/postgres.py prepares against what they build."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanner_auth_shared.tables import MESSAGING_TABLES
from scanner_auth_shared.testing.schema import (
    assert_migrations_match_models,
    assert_statements_prepare,
    statements_of,
)
from token_issuer.adapters import postgres
from token_issuer.adapters.tables import Base

pytestmark = pytest.mark.integration

MIGRATIONS = Path(postgres.__file__).parents[1] / "migrations"


async def test_the_migrations_build_the_tables_the_models_declare(database_url: str) -> None:
    await assert_migrations_match_models(
        database_url, MIGRATIONS, Base.metadata, ignore=MESSAGING_TABLES
    )


async def test_every_statement_prepares_against_the_migrated_schema(database_url: str) -> None:
    statements = statements_of(postgres)
    assert len(statements) >= 25  # all of them: the module's constants were found
    await assert_statements_prepare(database_url, MIGRATIONS, statements)
