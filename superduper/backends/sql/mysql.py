"""MySQL and MariaDB through PyMySQL: ``mysql://root@host/db`` or ``mariadb://...``."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from superduper.backends.base import Capabilities
from superduper.backends.sql.base import EVENTS, SQLDataBackend
from superduper.backends.sql.changes import CHANGES
from superduper.base.exceptions import ComponentError

SESSION_CLAIM = '@superduper_claim'  # the claim a superduper write gives its change rows (a session variable)


class MySQLDataBackend(SQLDataBackend):
    scheme = 'mysql'
    tested = 'the shared suite on a MariaDB server, in CI'
    needs_database_name = True
    # SKIP LOCKED: MariaDB 10.6+, MySQL 8+
    capabilities = Capabilities(change_capture='triggers', skip_locked=True, upsert=True, identifier_limit=64,
                                full_text='fulltext')
    stores_nan = False
    epoch_sql = 'UNIX_TIMESTAMP(NOW(6))'

    def configure_engine(self) -> None:
        # a session variable outlives the transaction: never let a pooled connection keep one
        sa.event.listen(self.engine, 'reset', _forget_claim)

    @functools.cached_property
    def _max_packet(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql('SELECT @@max_allowed_packet').scalar())

    def statement_limit(self) -> int | None:
        return self._max_packet - 64 * 1024  # room for the statement around the values

    def check_name(self, name: str, what: str = 'table') -> None:
        if len(name) > 64:  # characters, not bytes
            raise ComponentError(f'{what} name {name!r} is {len(name)} characters long; MySQL takes at most 64')

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        from sqlalchemy.dialects.mysql import insert

        stmt = insert(table)
        return stmt.on_duplicate_key_update({key[0]: stmt.inserted[key[0]]})

    def upsert_statement(self, table: sa.Table, keys: Any, key: str) -> None:
        return None  # the plain insert with ``upsert_suffix``

    def upsert_suffix(self, keys: Any, key: str) -> str | None:
        # SQLAlchemy doubles the % of a name twice inside VALUES(...) here: the clause is written with one escaping
        columns = [k for k in keys if k != key] or [key]
        return ' ON DUPLICATE KEY UPDATE ' + ', '.join(f'{self.sql_name(c)} = VALUES({self.sql_name(c)})' for c in columns)

    def capture_ddl(self, table: str, key: list[str]) -> list[str]:
        literal, now = self.sql_literal(table), self.epoch_sql

        def record(row: str) -> str:
            return (f'INSERT INTO {CHANGES} (tbl, source, claim, created) '
                    f'VALUES ({literal}, {self.key_text_sql(row, key)}, {SESSION_CLAIM}, {now})')

        same = ' AND '.join(f'OLD.{self.sql_name(k)} <=> NEW.{self.sql_name(k)}' for k in key)
        bodies = {'ins': ('INSERT', record('NEW')), 'del': ('DELETE', record('OLD')),
                  'upd': ('UPDATE', f'BEGIN {record("NEW")}; IF NOT ({same}) THEN {record("OLD")}; END IF; END')}
        # DDL commits at once here: dropping a current trigger to make it again would leave a moment in which
        # writes are not recorded. Only triggers of an earlier layout are replaced; current ones are kept.
        outdated = self._outdated_triggers(table)
        statements = []
        for sql in self.row_trigger_ddl(table, bodies, 'FOR EACH ROW {body}'):
            if sql.startswith('DROP TRIGGER'):
                if any(self.sql_name(name) in sql for name in outdated):
                    statements.append(sql)
            else:
                statements.append(sql.replace('CREATE TRIGGER', 'CREATE TRIGGER IF NOT EXISTS', 1))
        return statements

    def _outdated_triggers(self, table: str) -> list[str]:
        """This table's capture triggers that do not write to the current change log."""
        names = [self.trigger_name(table, event) for event in EVENTS]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                'SELECT trigger_name, action_statement FROM information_schema.triggers '
                'WHERE trigger_schema = DATABASE() AND trigger_name IN :names'
            ).bindparams(sa.bindparam('names', expanding=True)), {'names': names}).all()
        return [name for name, statement in rows if CHANGES not in statement]

    def mark_writes(self, conn: Connection, claim: int, changes: sa.Table) -> Any:
        conn.exec_driver_sql(f'SET {SESSION_CLAIM} = %s', (claim,))

    def unmark_writes(self, conn: Connection, claim: int, mark: Any, changes: sa.Table) -> None:
        conn.exec_driver_sql(f'SET {SESSION_CLAIM} = NULL')

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        url = uri if '+' in scheme else f'mysql+pymysql://{rest}'
        if 'charset=' not in url:
            url += ('&' if '?' in url else '?') + 'charset=utf8mb4'
        return url

    def engine_options(self) -> dict[str, Any]:
        # READ COMMITTED as on PostgreSQL: InnoDB's default takes gap locks, so a worker holding claimed change rows
        # would block every trigger appending new ones
        return {'pool_pre_ping': True, 'pool_recycle': 3600, 'isolation_level': 'READ COMMITTED'}

    def server_side_cursor(self, dbapi_connection: Any) -> Any:
        import pymysql.cursors

        return dbapi_connection.cursor(pymysql.cursors.SSCursor)

    def column_type(self, storage: str) -> Any:
        # TEXT and BLOB stop at 64 KiB in MySQL; the LONG variants hold what the other databases hold
        if storage in ('str', 'any'):
            return mysql.LONGTEXT()
        if storage == 'bytes':
            return mysql.LONGBLOB()
        if storage == 'datetime':
            return mysql.DATETIME(fsp=6)
        return super().column_type(storage)


def _forget_claim(dbapi_connection: Any, _record: Any, _reset_state: Any = None) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f'SET {SESSION_CLAIM} = NULL')
    finally:
        cursor.close()
