"""The schema's one source is adapters/tables.py: the migrations build exactly those tables,
and every statement of adapters/postgres.py prepares against what they build."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.adapters import postgres
from notifier.adapters.tables import NotifierModel
from scanner_auth_shared.tables import MESSAGING_TABLES
from scanner_auth_shared.testing.schema import (
    assert_migrations_match_models,
    assert_statements_prepare,
    statements_of,
)

pytestmark = pytest.mark.integration

MIGRATIONS = Path(postgres.__file__).parents[1] / "migrations"


async def test_the_migrations_build_the_tables_the_models_declare(database_url: str) -> None:
    await assert_migrations_match_models(
        database_url, MIGRATIONS, NotifierModel.metadata, ignore=MESSAGING_TABLES
    )


async def test_every_statement_prepares_against_the_migrated_schema(database_url: str) -> None:
    statements = statements_of(postgres)
    assert len(statements) == 12
    await assert_statements_prepare(database_url, MIGRATIONS, statements)
