"""MySQL and MariaDB through PyMySQL: ``mysql://root@host/db`` or ``mariadb://...``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import mysql

from superduper.backends.sql.base import SQLDataBackend


class MySQLDataBackend(SQLDataBackend):
    scheme = 'mysql'
    captures_changes = True
    skip_locked = True  # MariaDB 10.6+, MySQL 8+

    utc_now_sql = 'UTC_TIMESTAMP(6)'

    def row_trigger_sql(self, trigger: str, when: str, table: str, record: str) -> list[str]:
        return [f'DROP TRIGGER IF EXISTS {trigger}', f'CREATE TRIGGER {trigger} AFTER {when} ON {table} FOR EACH ROW {record}']

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
