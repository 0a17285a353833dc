"""The schema's one source is adapters/tables.py: the migrations build exactly those tables, and
every statement of the repository prepares against what they build."""

from __future__ import annotations

from pathlib import Path

import pytest

import scan_ingest
from scan_ingest.adapters import postgres
from scan_ingest.adapters.tables import Model
from scanner_auth_shared.tables import MESSAGING_TABLES
from scanner_auth_shared.testing.schema import (
    assert_migrations_match_models,
    assert_statements_prepare,
    statements_of,
)

pytestmark = pytest.mark.integration

MIGRATIONS = Path(scan_ingest.__file__).parent / "migrations"


async def test_the_migrations_build_the_tables_the_models_declare(database_url: str) -> None:
    await assert_migrations_match_models(
        database_url, MIGRATIONS, Model.metadata, ignore=MESSAGING_TABLES
    )


async def test_every_statement_prepares_against_the_migrated_schema(database_url: str) -> None:
    statements = statements_of(postgres)
    assert len(statements) == 9, sorted(statements)
    await assert_statements_prepare(database_url, MIGRATIONS, statements)
