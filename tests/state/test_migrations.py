"""The migrated schema must equal the models, and upgrading keeps existing data."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import ferryman.state.models  # noqa: F401 - registers the tables
from ferryman.errors import StateError
from ferryman.state import StateStore, migrations


def test_migrated_schema_matches_models(state_url: str) -> None:
    store = StateStore.open(state_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    # type-only differences between dialect reflections are not schema drift
    significant = [d for d in diff if not (isinstance(d, list) and d and d[0][0] == "modify_type")]
    assert significant == []


def test_migrate_is_idempotent_and_keeps_data(state_url: str) -> None:
    store = StateStore.open(state_url)
    run = store.start_run("p")
    assert store.migrate() == 0
    again = StateStore.open(state_url)
    assert again.schema_version() == migrations.LATEST
    assert again.get_run(run) is not None


def test_a_newer_schema_is_refused(state_url: str) -> None:
    store = StateStore.open(state_url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE ferryman_schema SET version = 999"))
    try:
        StateStore.open(state_url)
    except StateError as exc:
        assert "newer than this Ferryman" in str(exc)
    else:
        raise AssertionError("a schema from the future must be refused")
