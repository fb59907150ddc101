"""SQLite, the embedded default: ``sqlite://relative.db``, ``sqlite:///abs/path.db`` or ``sqlite://:memory:``."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from superduper.backends.sql.base import SQLDataBackend


def file_path(uri: str) -> str | None:
    """The database file of a seed-form URI, or ``None`` for an in-memory database."""
    rest = uri.partition('://')[2].split('?', 1)[0]
    if rest in ('', ':memory:', '/:memory:'):
        return None
    return '/' + rest.lstrip('/') if rest.startswith('/') else rest


class SQLiteDataBackend(SQLDataBackend):
    scheme = 'sqlite'
    captures_changes = True

    def __init__(self, uri: str):
        path = file_path(uri)
        if path is not None and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        super().__init__(uri)
        sa.event.listen(self.engine, 'connect', _configure_connection)

    utc_now_sql = "strftime('%Y-%m-%d %H:%M:%f', 'now')"

    def row_trigger_sql(self, trigger: str, when: str, table: str, record: str) -> list[str]:
        return [f'CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {when} ON {table} BEGIN {record}; END']

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        path = file_path(uri)
        return 'sqlite://' if path is None else f'sqlite:///{path}'

    def engine_options(self) -> dict[str, Any]:
        if file_path(self.uri) is None:
            return {'poolclass': StaticPool, 'connect_args': {'check_same_thread': False}}
        return {'connect_args': {'check_same_thread': False, 'timeout': 30}}


def _configure_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers and one writer work at once (the change-following thread, other processes)
    cursor.execute('PRAGMA journal_mode=WAL')
    cursor.execute('PRAGMA synchronous=NORMAL')
    cursor.execute('PRAGMA busy_timeout=30000')
    cursor.close()
