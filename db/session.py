"""Where the database is, and the one place that opens it: `connect(url)` gives a session factory on a
reachable database whose schema is at the latest migration."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import platformdirs
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: serialises schema upgrades of concurrent workers on one PostgreSQL database.
_UPGRADE_LOCK_KEY = 0x7474_6364_6200


class DatabaseError(RuntimeError):
    """The database cannot be used: unreachable, or its schema is not one this version knows."""


class DatabaseSettings(BaseSettings):
    """`TTC_DATABASE_URL`, e.g. postgresql://user:password@host:5432/ttc."""

    model_config = SettingsConfigDict(env_prefix="TTC_DATABASE_")

    url: str | None = None


def database_url(explicit: str | None = None) -> str:
    """The URL to use: `explicit`, else `TTC_DATABASE_URL`, else a SQLite file in the user's data dir.

    `explicit` may name the URL instead of holding it, so that a password never travels as a flow
    parameter (Prefect stores parameters in plain text): `env:VAR` reads the environment variable
    VAR, `secret:NAME` the Prefect Secret block NAME (resolved where the flow runs)."""
    if explicit and explicit.startswith("env:"):
        variable = explicit.removeprefix("env:")
        value = os.environ.get(variable)
        if not value:
            raise DatabaseError(f"--db {explicit}: environment variable {variable} is not set")
        return value
    if explicit and explicit.startswith("secret:"):
        return _secret(explicit.removeprefix("secret:"))
    if explicit:
        return explicit
    configured = DatabaseSettings().url
    if configured:
        return configured
    data_dir = Path(platformdirs.user_data_dir("ttc"))
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'ttc.db'}"


def _secret(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()  # type: ignore[union-attr]  # sync outside an event loop
    except (ValueError, RuntimeError) as error:
        raise DatabaseError(f"--db secret:{name}: no Prefect Secret block {name!r} ({error})") from error
    return str(value)


def has_password(url: str) -> bool:
    """Whether `url` is a database URL that carries a password (which must not become a parameter)."""
    try:
        return make_url(url).password is not None
    except ArgumentError:
        return False


def normalise_url(url: str | URL) -> URL:
    """Parse `url`, choosing psycopg 3 for PostgreSQL when no driver is named; DatabaseError if it
    is not a URL SQLAlchemy can read."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise DatabaseError(f"cannot parse database URL {_hide(str(url))!r}: expected e.g. sqlite:///ttc.db") from error
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked(url: str | URL) -> str:
    """`url` as text with its password hidden, fit for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()


def connect(url: str | None = None) -> sessionmaker[Session]:
    """A session factory for `url` (default: `database_url()`), after checking the server answers and
    upgrading its schema to the latest migration. Engines are made once per URL and reused.

    Raises DatabaseError, naming the URL with its password masked, when the database cannot be reached
    or carries a schema revision unknown to this version."""
    parsed = normalise_url(database_url(url))
    cache_key = parsed.render_as_string(hide_password=False)
    with _lock:
        if cache_key not in _sessionmakers:
            engine = _make_engine(parsed)
            try:
                _upgrade(engine)
            except BaseException:
                engine.dispose()
                raise
            _engines[cache_key] = engine
            _sessionmakers[cache_key] = sessionmaker(engine, expire_on_commit=False)
        return _sessionmakers[cache_key]


def dispose(url: str | None = None) -> None:
    """Close the pooled connections of `url`'s engine (of every engine when `url` is None)."""
    with _lock:
        if url is None:
            keys = list(_engines)
        else:
            keys = [normalise_url(database_url(url)).render_as_string(hide_password=False)]
        for key in keys:
            _sessionmakers.pop(key, None)
            engine = _engines.pop(key, None)
            if engine is not None:
                engine.dispose()


def migration_config(url: str | URL | None = None) -> Config:
    """An Alembic configuration for the migrations shipped in this package, built in code."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        rendered = normalise_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def _make_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                reason = f"cannot create {folder}: {error.strerror or error}"
                raise DatabaseError(f"cannot reach database {masked(url)}: {reason}") from error
    elif url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = 10
    try:
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as error:
        raise DatabaseError(f"unknown database kind in {masked(url)}: use sqlite:/// or postgresql://") from error
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite leaves foreign keys off per connection; WAL lets readers work while a run writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL survives a process crash (the trace guarantee); only power loss can drop the tail.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _upgrade(engine: Engine) -> None:
    config = migration_config()
    head = ScriptDirectory.from_config(config).get_current_head()
    try:
        connection = engine.connect()
    except DBAPIError as error:
        raise DatabaseError(f"cannot reach database {masked(engine.url)}: {_reason(error)}") from error
    try:
        with connection, connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
            if MigrationContext.configure(connection).get_current_revision() == head:
                return
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except CommandError as error:
        raise DatabaseError(f"cannot migrate database {masked(engine.url)}: {error}") from error


def _hide(text: str) -> str:
    """A string that failed to parse as a URL, with anything between `:` and `@` hidden."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", text)


def _reason(error: DBAPIError) -> str:
    """The driver's own words, without its connection preamble: 'connection refused'."""
    message = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else type(error).__name__
    message = message.rsplit(" failed: ", 1)[-1]
    message = message.removeprefix("FATAL:").strip()
    return message[:1].lower() + message[1:]
