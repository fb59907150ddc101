"""Oracle Database through python-oracledb (thin mode, no client libraries):
``oracle://user:password@host:1521/?service_name=FREEPDB1`` (``oracle+oracledb://`` the same).

Compile-level only: every statement superduper sends is compiled for Oracle Database 19c and parsed in the tests
(``tests/test_dialects.py``), none has run on a server yet.

- ``str`` fields are ``VARCHAR2(4000 CHAR)``: a ``CLOB`` cannot be compared with ``=`` or ``IN``, which filters
  need (longer text belongs in a ``json`` or ``bytes`` field, kept as ``CLOB``/``BLOB``). Oracle stores an empty
  string as NULL (so the artifact references' lock rows, held by '' elsewhere, are held by '*' here).
- ``datetime`` is ``TIMESTAMP`` (Oracle's ``DATE`` drops fractions of a second), ``float`` is ``BINARY_DOUBLE``
  (which keeps NaN and infinity), ``bool`` is a ``SMALLINT`` before 23ai.
- Upserts are one ``MERGE`` a row; rows go through SQLAlchemy's ``executemany`` so that long text and bytes are
  bound as LOBs.
- ``DROP TABLE IF EXISTS`` is a PL/SQL block before 23ai.
- Other clients' writes are not seen (``change_capture='none'``). Oracle has row triggers, but the change feed
  around them needs more than trigger DDL here: the change log's and claims' ids are numbered by the database
  (SQLAlchemy writes no ``IDENTITY`` for Oracle unless asked), workers claim with ``FOR UPDATE SKIP LOCKED`` and
  a row limit (Oracle refuses the two together, ORA-02014) and the guarded write of stamps locks its rows only
  where ``skip_locked`` is declared. Until those are written for Oracle, only writes through superduper are
  followed.
"""

from __future__ import annotations

from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import oracle
from sqlalchemy.engine import Connection

from superduper.backends.base import Capabilities
from superduper.backends.feed import chunks
from superduper.backends.sql.base import SQLDataBackend
from superduper.backends.sql.text_types import JSONText, MergeRow

#: Oracle's error number for a deadlock its server broke
DEADLOCK = 60
#: ORA-00942: table or view does not exist
NO_TABLE = -942
#: the holder name of artifact lock rows: elsewhere '', which Oracle stores as NULL
ARTIFACT_LOCK = '*'


class OracleDataBackend(SQLDataBackend):
    scheme = 'oracle'
    tested = 'compile-level only (not tested against a server)'
    capabilities = Capabilities(change_capture='none', skip_locked=False, transactions=True, upsert=True,
                                identifier_limit=128)
    offline_server_version = (19,)
    epoch_sql = ("((CAST(SYS_EXTRACT_UTC(SYSTIMESTAMP) AS DATE) - DATE '1970-01-01') * 86400 "
                 "+ MOD(EXTRACT(SECOND FROM SYSTIMESTAMP), 1))")

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        return uri if '+' in scheme else f'oracle+oracledb://{rest}'

    def assume_server(self, dialect: Any) -> None:
        version = dialect.server_version_info
        dialect._supports_oracle_json = version >= (21,)
        dialect.supports_native_boolean = version >= (23,)
        dialect.supports_identity_columns = True
        dialect._supports_offset_fetch = dialect.enable_offset_fetch

    def metadata_store(self) -> Any:
        from superduper.backends.sql.metadata import SQLMetadataStore

        return SQLMetadataStore(self.engine, artifact_lock=ARTIFACT_LOCK)

    def sql_name(self, name: str) -> str:
        # quoted only where needed, as SQLAlchemy names tables: a lowercase name unquoted is Oracle's uppercase one,
        # quoted it would be another table
        return self.dialect.identifier_preparer.quote(name)

    def is_deadlock(self, error: sa.exc.DBAPIError) -> bool:
        args = getattr(error.orig, 'args', None) or (None,)
        return getattr(args[0], 'code', None) == DEADLOCK

    # ---- types --------------------------------------------------------------------------------------------
    def column_type(self, storage: str) -> Any:
        if storage in ('str', 'any'):
            return sa.String(4000)
        if storage == 'json':
            return JSONText(sa.Text())  # CLOB: the JSON type is 21c's
        if storage == 'datetime':
            return oracle.TIMESTAMP()
        if storage == 'float':
            return oracle.BINARY_DOUBLE()
        return super().column_type(storage)  # NUMBER(19), SMALLINT, BLOB, CHAR(32)

    # ---- statements -------------------------------------------------------------------------------------------
    def add_column_sql(self, name: str, field: str, ftype: Any) -> str:
        ddl = self.field_type(ftype).compile(dialect=self.dialect)
        return f'ALTER TABLE {self.sql_name(name)} ADD ({self.sql_name(field)} {ddl})'

    def drop_table_sql(self, name: str) -> str:
        drop = f'DROP TABLE {self.sql_name(name)}'.replace("'", "''")
        return (f"BEGIN EXECUTE IMMEDIATE '{drop}'; "
                f'EXCEPTION WHEN OTHERS THEN IF SQLCODE != {NO_TABLE} THEN RAISE; END IF; END;')

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str) -> Any:
        return MergeRow(table, keys, [key], from_dual=' FROM dual', alias=' ')

    def insert(self, conn: Connection, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> None:
        """Rows through SQLAlchemy's ``executemany``, which binds long text and bytes as LOBs (the driver's own
        fast path would refuse text over 4000 bytes)."""
        self._check_sizes(name, keys, columns)
        table = self.table(name)
        stmt = table.insert() if upsert_key is None else self.upsert_statement(table, keys, upsert_key)
        rows = [dict(zip(keys, row)) for row in zip(*columns)]
        with self.errors('insert into', name):
            for part in chunks(rows):
                conn.execute(stmt, part)

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        raise NotImplementedError('Oracle records no changes here (change_capture is none)')
