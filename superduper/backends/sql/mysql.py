"""MySQL and MariaDB through PyMySQL: ``mysql://root@host/db`` or ``mariadb://...``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import mysql

from superduper.backends.sql.base import SQLDataBackend


class MySQLDataBackend(SQLDataBackend):
    scheme = 'mysql'
    captures_changes = True
    skip_locked = True  # MariaDB 10.6+, MySQL 8+

    def install_capture(self, table: str, primary_key: str) -> None:
        self.changes  # noqa: B018 (created on first use)
        name, key, literal = self._quote(table), self._quote(primary_key), self._literal(table)
        with self.begin() as conn:
            for event, when, row, op in (('ins', 'INSERT', 'NEW', 'upsert'), ('upd', 'UPDATE', 'NEW', 'upsert'),
                                         ('del', 'DELETE', 'OLD', 'delete')):
                trigger = self._quote(self.trigger_name(table, event))
                conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {trigger}')
                conn.exec_driver_sql(
                    f'CREATE TRIGGER {trigger} AFTER {when} ON {name} FOR EACH ROW '
                    f'INSERT INTO _superduper_changes (tbl, source, op, created_at) '
                    f"VALUES ({literal}, {row}.{key}, '{op}', UTC_TIMESTAMP(6))"
                )

    def remove_capture(self, table: str) -> None:
        with self.begin() as conn:
            for event in ('ins', 'upd', 'del'):
                conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {self._quote(self.trigger_name(table, event))}')

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
