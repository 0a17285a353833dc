"""The schema's declaration side: a SQLModel base per service (its tables are declared, never
queried through the ORM: the services reach PostgreSQL through `postgres.Database`, asyncpg),
and the DSN helper the tests use."""

from __future__ import annotations

from sqlalchemy.orm import registry
from sqlmodel import SQLModel

from .postgres import asyncpg_dsn


def service_model_base(name: str) -> type[SQLModel]:
    """A SQLModel base with its own metadata, so that two services may both have a `tokens`
    table while being imported into one process (tests, the dev command)."""
    return type(f"{name}Model", (SQLModel,), {}, registry=registry())


__all__ = ["asyncpg_dsn", "service_model_base"]
