"""A stand-in engine that never connects: it keeps every statement it is given, for seeing the SQL superduper sends
a dialect without its server (``SQLDataBackend.offline``, ``superduper.backends.sql.statements``).

``RecordingEngine`` is SQLAlchemy's mock engine (DDL from ``MetaData.create_all`` reaches it as statements) with
the few things the metadata store, the output log and the change feed use of a real engine: connections as context
managers, transactions, and results. Every result is empty and says one row was affected, so code that reads before
it writes takes the path of a database without the rows yet.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import inspection
from sqlalchemy.engine.mock import MockConnection
from sqlalchemy.sql import dml

from superduper.backends.sql.text_types import MergeRow

#: the key ``inserted_primary_key`` gives (a row the database numbered)
GENERATED_KEY = 1


@dataclass
class Sent:
    """One statement given to the engine, with its parameters (a dict, a list of dicts for ``executemany``, a
    tuple for SQL given to the driver as it is, or ``None``)."""

    statement: Any
    parameters: Any = None


class NoDriver:
    """The DBAPI module of an engine that has none: its error classes, which nothing raises."""

    paramstyle = 'named'
    Binary = bytes

    class Error(Exception):
        pass

    class DatabaseError(Error):
        pass


class NoRows:
    """The result of every statement: no rows, one row affected."""

    rowcount = 1
    inserted_primary_key = (GENERATED_KEY,)

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def all(self) -> list:
        return []

    def first(self) -> None:
        return None

    def one(self) -> tuple:
        return (0, None)

    def scalar(self) -> None:
        return None

    def scalar_one(self) -> int:
        return 0

    def scalar_one_or_none(self) -> None:
        return None

    def scalars(self) -> 'NoRows':
        return self

    def mappings(self) -> 'NoRows':
        return self


class RecordingEngine(MockConnection):
    """An engine (and its connections) that keeps what it is sent in ``sent`` and runs nothing."""

    def __init__(self, url: str):
        dialect = sa.engine.make_url(url).get_dialect()()
        dialect.dbapi = NoDriver  # what error handlers name, without importing the driver
        super().__init__(dialect, self._keep)
        self.url = sa.engine.make_url(url)
        self.sent: list[Sent] = []

    def _keep(self, statement: Any, parameters: Any = None) -> NoRows:
        self.sent.append(Sent(statement, parameters))
        return NoRows()

    def exec_driver_sql(self, sql: str, parameters: Any = None, execution_options: Any = None) -> NoRows:
        return self._keep(sql, parameters)

    def __enter__(self) -> 'RecordingEngine':
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    @contextlib.contextmanager
    def begin(self) -> Iterator['RecordingEngine']:
        yield self

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def dispose(self) -> None:
        pass

    def take(self) -> list[Sent]:
        """What was sent since the last ``take``."""
        sent, self.sent = self.sent, []
        return sent


class NoTables:
    """What an inspector finds on an engine that never connects: no tables (so a table is built as declared)."""

    def has_table(self, name: str, schema: str | None = None) -> bool:
        return False

    def get_table_names(self, schema: str | None = None) -> list[str]:
        return []


@inspection._inspects(RecordingEngine)
def _no_tables(engine: RecordingEngine) -> NoTables:
    return NoTables()


def render(sent: Sent, dialect: Any) -> str:
    """A statement as SQL for ``dialect``, its parameters (the first row of an ``executemany``) written in as
    literals where the dialect can write them, so that the text is a whole statement a SQL parser can read. SQL
    given to the driver as it is keeps its placeholders."""
    statement, params = sent.statement, sent.parameters
    if isinstance(params, list):
        params = params[0] if params else None
    if isinstance(statement, str):
        return _fill(statement, params, dialect) if isinstance(params, dict) else statement
    if params:
        statement = _with_values(statement, params)
    try:
        return str(statement.compile(dialect=dialect, compile_kwargs={'literal_binds': True})).strip()
    except sa.exc.CompileError:  # a value the dialect writes no literal for (bytes on Oracle): a placeholder
        return _some_literals(statement, dialect)


def _some_literals(statement: Any, dialect: Any) -> str:
    """The statement with the values the dialect can write as literals written in, placeholders for the others."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={'render_postcompile': True})
    sql, values = str(compiled), compiled.construct_params()
    for key, bind in compiled.binds.items():
        if key not in values or isinstance(values[key], (bytes, bytearray, memoryview)):
            continue  # bytes: a dialect without a binary literal writes them as text, which they are not
        try:
            literal = compiled.render_literal_value(values[key], bind.type)
        except (sa.exc.CompileError, NotImplementedError):
            continue
        name = re.escape(compiled.escaped_bind_names.get(key, key))
        sql = re.sub(rf':"?{name}"?(?![\w"])', lambda _: literal, sql)
    return sql.strip()


def _fill(sql: str, params: dict, dialect: Any) -> str:
    """SQL given to the driver as it is, its ``:name`` placeholders replaced by the values' literals (``:p<n>``
    where the dialect has none: bytes, or a name a parser would read as an expression)."""
    for i, name in enumerate(sorted(params, key=len, reverse=True)):
        value = params[name]
        try:
            if isinstance(value, (bytes, bytearray, memoryview)):
                raise sa.exc.CompileError('no literal')
            literal = str(sa.literal(value).compile(dialect=dialect, compile_kwargs={'literal_binds': True}))
        except (sa.exc.CompileError, NotImplementedError):
            literal = f':p{i}'
        sql = re.sub(rf':"?{re.escape(name)}"?(?![\w"-])', lambda _: literal, sql)
    return sql


def _with_values(statement: Any, params: dict) -> Any:
    if isinstance(statement, MergeRow):
        return statement.with_values(params)
    if isinstance(statement, dml.Insert) and statement.select is None:
        return statement.values(**params)
    if isinstance(statement, sa.TextClause):
        return statement.bindparams(**{k: _plain(v) for k, v in params.items()})
    return statement.params(**params)


def _plain(value: Any) -> Any:
    """A value a text statement's untyped parameter can be written as."""
    if isinstance(value, (datetime.datetime, uuid.UUID)):
        return str(value)
    return value
