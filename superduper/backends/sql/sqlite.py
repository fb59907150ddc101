"""SQLite, the embedded default: ``sqlite://relative.db``, ``sqlite:///abs/path.db`` or ``sqlite://:memory:``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from superduper.backends.sql.serial_pool import SerialPool

from superduper.backends.base import Capabilities
from superduper.backends.sql.base import SQLDataBackend
from superduper.backends.sql.changes import CHANGES
from superduper.base.exceptions import ConfigError


def file_path(uri: str) -> str | None:
    """The database file of a seed-form URI, or ``None`` for an in-memory database."""
    rest = uri.partition('://')[2].split('?', 1)[0]
    if rest in ('', ':memory:', '/:memory:'):
        return None
    return '/' + rest.lstrip('/') if rest.startswith('/') else rest


def missing_file(uri: str, engine: str) -> str | None:
    """Why a file URI (SQLite, DuckDB) names no existing database, or ``None``."""
    path = file_path(uri)
    if path is not None and not os.path.exists(path):
        return f'no {engine} database at {os.path.abspath(path)}'
    return None


class SQLiteDataBackend(SQLDataBackend):
    scheme = 'sqlite'
    tested = 'the shared suite, in CI'
    # one writer at a time: a write transaction holds the database, so claims need no row locks
    capabilities = Capabilities(change_capture='triggers', upsert=True, serialized_writes=True, full_text='fts5')
    stores_nan = False
    epoch_sql = "((julianday('now') - 2440587.5) * 86400.0)"

    @classmethod
    def missing(cls, uri: str) -> str | None:
        return missing_file(uri, 'SQLite')

    def __init__(self, uri: str):
        path = file_path(uri)
        if path is not None and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        super().__init__(uri)
        if path is None:  # one connection, this process only: writes are followed as they are made here
            self.capabilities = dataclasses.replace(
                self.capabilities, change_capture='none', shared=False, persistent=False,
                unshared_reason=f'the in-memory database {uri!r} lives in one process')

    def conflict_insert(self, table: sa.Table) -> Any:
        from sqlalchemy.dialects.sqlite import insert

        return insert(table)

    def configure_engine(self) -> None:
        sa.event.listen(self.engine, 'connect', _configure_connection)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction that takes the database's write lock at once (``BEGIN IMMEDIATE``): one that read
        first and then wrote could fail, without waiting, if another connection wrote in between."""
        if self.capabilities.change_capture == 'none':
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            conn.exec_driver_sql('BEGIN IMMEDIATE')
            yield conn
            conn.commit()

    def capture_ddl(self, table: str, key: list[str]) -> list[str]:
        literal, now = self.sql_literal(table), self.epoch_sql

        def record(row: str) -> str:
            return f'INSERT INTO {CHANGES} (tbl, source, created) VALUES ({literal}, {self.key_text_sql(row, key)}, {now});'

        same = ' AND '.join(f'OLD.{self.sql_name(k)} IS NEW.{self.sql_name(k)}' for k in key)
        old_key = (f'INSERT INTO {CHANGES} (tbl, source, created) SELECT {literal}, {self.key_text_sql("OLD", key)}, '
                   f'{now} WHERE NOT ({same});')  # a changed primary key: the old key's outputs go
        bodies = {'ins': ('INSERT', record('NEW')), 'upd': ('UPDATE', record('NEW') + ' ' + old_key),
                  'del': ('DELETE', record('OLD'))}
        return self.row_trigger_ddl(table, bodies, 'BEGIN {body} END')

    def rows_parameter_sql(self) -> str | None:
        return ("(SELECT json_extract(value, '$[0]') AS d, json_extract(value, '$[1]') AS src, "
                "json_extract(value, '$[2]') AS e FROM json_each(:rows)) AS r")

    def rows_parameter(self, rows: list[tuple[str, str, str | None]]) -> dict[str, Any]:
        return {'rows': json.dumps(rows)}

    def mark_writes(self, conn: Connection, claim: int, changes: sa.Table) -> Any:
        # the transaction holds the write lock: every change row after the last one now is this transaction's
        return conn.execute(sa.select(sa.func.max(changes.c.id))).scalar() or 0

    def unmark_writes(self, conn: Connection, claim: int, mark: Any, changes: sa.Table) -> None:
        conn.execute(changes.update().where(changes.c.id > mark, changes.c.claim.is_(None)).values(claim=claim))

    @classmethod
    def shareable_uri(cls, uri: str, base_dir: str) -> str:
        path = file_path(uri)
        if path is None:
            raise ConfigError(f'the in-memory database {uri!r} lives in one process')
        query = uri.partition('?')[2]
        return f'sqlite://{os.path.normpath(os.path.join(base_dir, path))}' + (f'?{query}' if query else '')

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        path = file_path(uri)
        return 'sqlite://' if path is None else f'sqlite:///{path}'

    def engine_options(self) -> dict[str, Any]:
        if file_path(self.uri) is None:
            return {'poolclass': SerialPool, 'connect_args': {'check_same_thread': False}}
        return {'connect_args': {'check_same_thread': False, 'timeout': 30}}


def _configure_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers and one writer work at once (the change-following thread, other processes)
    cursor.execute('PRAGMA journal_mode=WAL')
    cursor.execute('PRAGMA synchronous=NORMAL')
    cursor.execute('PRAGMA busy_timeout=30000')
    cursor.close()
