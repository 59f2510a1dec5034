"""The schema: migrations equal the models, connect() upgrades, and failures say where."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, Table, select, text

from db import DatabaseError, Recorder, connect, database_url, dispose
from db.models import Base, Run
from db.session import migration_config


def diff_against(database: str, metadata: MetaData) -> list[object]:
    with connect(database)() as session:
        context = MigrationContext.configure(session.connection(), opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrations_create_exactly_the_models(database_url: str) -> None:
    assert diff_against(database_url, Base.metadata) == []


def test_a_model_change_without_migration_is_detected(database_url: str) -> None:
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    Table("notes", changed, Column("id", Integer, primary_key=True))
    assert [entry[0] for entry in diff_against(database_url, changed)] == ["add_table"]  # type: ignore[index]


def test_connect_leaves_the_schema_at_head_and_downgrade_round_trips(database_url: str) -> None:
    config = migration_config()
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = connect(database_url).kw["bind"]
    with engine.begin() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        command.upgrade(config, "head")
    assert diff_against(database_url, Base.metadata) == []


def test_timestamps_come_back_aware_in_utc(database_url: str) -> None:
    sessions = connect(database_url)
    run_id = Recorder(sessions).open_run("tz", {})
    east = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    with sessions.begin() as session:
        session.get_one(Run, run_id).created_at = east
    with sessions() as session:
        stored = session.scalars(select(Run.created_at)).one()
    assert stored == east
    assert stored.tzinfo == UTC


@pytest.mark.postgres
def test_unreachable_postgres_raises_database_error_naming_the_masked_url() -> None:
    with pytest.raises(DatabaseError) as raised:
        connect("postgresql://postgres:s3cret@127.0.0.1:5999/test")
    message = str(raised.value)
    assert message == (
        "cannot reach database postgresql+psycopg://postgres:***@127.0.0.1:5999/test: connection refused"
    )
    assert "s3cret" not in message


def test_unusable_sqlite_path_raises_database_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseError, match=r"cannot reach database sqlite:///.*/file/sub/ttc.db"):
        connect(f"sqlite:///{blocker}/sub/ttc.db")


def test_database_url_prefers_explicit_then_environment_then_user_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("TTC_DATABASE_URL", raising=False)
    assert database_url() == f"sqlite:///{tmp_path / 'ttc' / 'ttc.db'}"
    assert (tmp_path / "ttc").is_dir()
    monkeypatch.setenv("TTC_DATABASE_URL", "postgresql://db.example/ttc")
    assert database_url() == "postgresql://db.example/ttc"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_schema_from_a_newer_version_is_refused(database_url: str) -> None:
    with connect(database_url).begin() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    dispose(database_url)  # as a new process would
    with pytest.raises(DatabaseError, match=r"cannot migrate database .*9999"):
        connect(database_url)
