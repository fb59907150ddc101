"""Microsoft SQL Server (and Azure SQL) through pymssql: ``mssql://user:password@host:1433/database``; another
installed driver is named the SQLAlchemy way (``mssql+pyodbc://...?driver=...``).

Compile-level only: every statement superduper sends is compiled for SQL Server 2022 and parsed in the tests
(``tests/test_dialects.py``), none has run on a server yet.

- Text is ``NVARCHAR``: ``VARCHAR`` would keep only the characters of the database's code page.
- Upserts are one ``MERGE ... WITH (HOLDLOCK)`` a row (the lock closes MERGE's gap between matching and inserting).
- Other clients' writes are recorded by one ``AFTER INSERT, UPDATE, DELETE`` trigger a table, reading the
  ``inserted`` and ``deleted`` rows of the statement; a write through superduper marks its change rows with the
  claim it puts in the session context (``sp_set_session_context``), reset before the connection is pooled.
- ``FOR UPDATE SKIP LOCKED`` is the table hint ``WITH (UPDLOCK, ROWLOCK, READPAST)`` (SQLAlchemy's dialect renders
  no locking at all), so workers claim changes without queueing behind each other.
- A composite primary key's text is ``JSON_ARRAY`` (SQL Server 2022 and Azure SQL).
- The tables every SQL database shares (metadata, change log, output log) keep their ``String`` columns as
  ``VARCHAR``: component names, and the key texts of followed tables, in the database's code page.
"""

from __future__ import annotations

from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, registry
from sqlalchemy.dialects.mssql.base import MSSQLCompiler
from sqlalchemy.dialects.mssql.pymssql import MSDialect_pymssql
from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc
from sqlalchemy.engine import Connection

from superduper.backends.base import Capabilities
from superduper.backends.sql.base import SQLDataBackend, _redact
from superduper.backends.sql.changes import CHANGES
from superduper.backends.sql.text_types import JSONText, MergeRow
from superduper.base.exceptions import ComponentError, ConfigError

SESSION_CLAIM = 'superduper_claim'  # the session context key a superduper write puts its claim under
CLAIM_SQL = f"CAST(SESSION_CONTEXT(N'{SESSION_CLAIM}') AS BIGINT)"


def _lock_hint(lock: Any) -> str:
    return 'WITH (UPDLOCK, ROWLOCK, READPAST)' if lock.skip_locked else 'WITH (UPDLOCK, ROWLOCK)'


class _LockingCompiler(MSSQLCompiler):
    """SQL Server's compiler with ``SELECT ... FOR UPDATE [SKIP LOCKED]`` as table hints on what it reads."""

    def visit_select(self, select_stmt: Any, **kw: Any) -> str:
        lock = select_stmt._for_update_arg
        if lock is not None:
            for table in select_stmt.get_final_froms():
                if isinstance(table, sa.TableClause):  # a table (not a subquery) takes hints
                    select_stmt = select_stmt.with_hint(table, _lock_hint(lock), 'mssql')
        return super().visit_select(select_stmt, **kw)


class PymssqlDialect(MSDialect_pymssql):
    statement_compiler = _LockingCompiler


class PyodbcDialect(MSDialect_pyodbc):
    statement_compiler = _LockingCompiler


registry.register('mssql.superduper_pymssql', __name__, 'PymssqlDialect')
registry.register('mssql.superduper_pyodbc', __name__, 'PyodbcDialect')
DRIVERS = {'pymssql': 'superduper_pymssql', 'pyodbc': 'superduper_pyodbc'}


class MSSQLDataBackend(SQLDataBackend):
    scheme = 'mssql'
    tested = 'compile-level only (not tested against a server)'
    needs_database_name = True
    capabilities = Capabilities(change_capture='triggers', skip_locked=True, transactions=True, upsert=True,
                                identifier_limit=128)
    offline_server_version = (16,)  # SQL Server 2022
    epoch_sql = "(CAST(DATEDIFF_BIG(MICROSECOND, '1970-01-01', SYSUTCDATETIME()) AS FLOAT) / 1000000.0)"

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        driver = scheme.partition('+')[2] or 'pymssql'
        if driver not in DRIVERS:  # another driver's dialect would take no lock hints (see ``_LockingCompiler``)
            raise ConfigError(f'{_redact(uri)!r}: SQL Server is reached through pymssql (mssql://) or pyodbc '
                              f'(mssql+pyodbc://), not {driver}')
        return f'mssql+{DRIVERS[driver]}://{rest}'

    def assume_server(self, dialect: Any) -> None:
        dialect._setup_version_attributes()
        dialect._supports_nvarchar_max = True

    def configure_engine(self) -> None:
        # the session context outlives the transaction: never let a pooled connection keep a claim
        sa.event.listen(self.engine, 'reset', _forget_claim)

    def check_name(self, name: str, what: str = 'table') -> None:
        if len(name) > 128:  # characters (sysname), not bytes
            raise ComponentError(f'{what} name {name!r} is {len(name)} characters long; SQL Server takes at most 128')

    # ---- types --------------------------------------------------------------------------------------------
    def column_type(self, storage: str) -> Any:
        if storage in ('str', 'any'):
            return sa.UnicodeText()  # NVARCHAR(max)
        if storage == 'json':
            return JSONText(sa.UnicodeText())
        if storage == 'datetime':
            return mssql.DATETIME2(precision=6)
        if storage == 'float':
            return mssql.FLOAT(53)
        return super().column_type(storage)  # BIGINT, BIT, VARBINARY(max), UNIQUEIDENTIFIER

    def id_type(self) -> Any:
        return sa.Unicode(255)

    # ---- statements -------------------------------------------------------------------------------------------
    def add_column_sql(self, name: str, field: str, ftype: Any) -> str:
        ddl = self.field_type(ftype).compile(dialect=self.dialect)
        return f'ALTER TABLE {self.sql_name(name)} ADD {self.sql_name(field)} {ddl}'

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str) -> Any:
        return MergeRow(table, keys, [key], target_hint=' WITH (HOLDLOCK)', terminator=';')

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        columns = [c.name for c in table.columns if not c.nullable]  # what the caller's rows give
        return MergeRow(table, columns, key, update=False, target_hint=' WITH (HOLDLOCK)', terminator=';')

    def key_text(self, columns: Sequence[Any]) -> Any:
        if len(columns) == 1:
            return sa.cast(columns[0], sa.UnicodeText)
        return sa.cast(sa.func.json_array(*columns), sa.UnicodeText)

    # ---- change capture ---------------------------------------------------------------------------------------
    def capture_ddl(self, table: str, key: list[str]) -> list[str]:
        """One statement-level trigger for the three events: ``inserted`` holds the new rows, ``deleted`` the old
        (both on an update, so a changed key records the old key and the new)."""
        trigger = self.sql_name(self.trigger_name(table, 'all'))
        keys = (f'SELECT {self.key_text_sql("i", key)} AS k FROM inserted AS i UNION '
                f'SELECT {self.key_text_sql("d", key)} AS k FROM deleted AS d')
        return [
            f'CREATE OR ALTER TRIGGER {trigger} ON {self.sql_name(table)} AFTER INSERT, UPDATE, DELETE AS '
            f'BEGIN SET NOCOUNT ON; INSERT INTO {self.sql_name(CHANGES)} (tbl, source, claim, created) '
            f'SELECT N{self.sql_literal(table)}, keys.k, {CLAIM_SQL}, {self.epoch_sql} FROM ({keys}) AS keys; END'
        ]

    def drop_capture_ddl(self, table: str) -> list[str]:
        return [f'DROP TRIGGER IF EXISTS {self.sql_name(self.trigger_name(table, "all"))}']

    def mark_writes(self, conn: Connection, claim: int, changes: sa.Table) -> Any:
        conn.execute(_set_claim(), {'claim': claim})

    def unmark_writes(self, conn: Connection, claim: int, mark: Any, changes: sa.Table) -> None:
        conn.execute(_set_claim(), {'claim': None})


def _set_claim() -> sa.TextClause:
    return sa.text(f"EXEC sp_set_session_context @key = N'{SESSION_CLAIM}', @value = :claim").bindparams(
        sa.bindparam('claim', type_=sa.BigInteger))


def _forget_claim(dbapi_connection: Any, _record: Any, _reset_state: Any = None) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"EXEC sp_set_session_context @key = N'{SESSION_CLAIM}', @value = NULL")
    finally:
        cursor.close()
