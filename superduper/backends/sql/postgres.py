"""PostgreSQL through psycopg 3: ``postgresql://user@host/db`` or ``postgres://...``."""

from __future__ import annotations

import uuid
from typing import Any

import functools

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from superduper.backends.sql.base import SQLDataBackend
from superduper.components.datatype import FieldType, Vector


class PgVector(sa.types.UserDefinedType):
    """pgvector's ``VECTOR(n)``: values travel as the float32 bytes every backend uses, in pgvector's text form."""

    cache_ok = True

    def __init__(self, dim: int):
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return f'VECTOR({self.dim})'

    def bind_processor(self, dialect: Any) -> Any:
        def process(value: Any) -> Any:
            if value is None:
                return None
            return '[' + ','.join(map(str, np.frombuffer(value, dtype=np.float32).tolist())) + ']'

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> Any:
            if value is None:
                return None
            return np.array(value[1:-1].split(','), dtype=np.float32).tobytes()

        return process


class PostgresDataBackend(SQLDataBackend):
    scheme = 'postgresql'
    captures_changes = True
    skip_locked = True

    def install_capture(self, table: str, primary_key: str) -> None:
        # statement-level triggers with transition tables: a bulk insert costs one INSERT ... SELECT, not one a row
        self.changes  # noqa: B018 (created on first use)
        function = self._quote(self.trigger_name(table, 'fn'))
        name, key, literal = self._quote(table), self._quote(primary_key), self._literal(table)
        now = "(now() AT TIME ZONE 'utc')"
        body = (
            f"BEGIN IF TG_OP = 'DELETE' THEN "
            f"INSERT INTO _superduper_changes (tbl, source, op, created_at) "
            f"SELECT {literal}, o.{key}::text, 'delete', {now} FROM old_rows o; "
            f"ELSE INSERT INTO _superduper_changes (tbl, source, op, created_at) "
            f"SELECT {literal}, n.{key}::text, 'upsert', {now} FROM new_rows n; END IF; RETURN NULL; END"
        )
        with self.begin() as conn:
            conn.exec_driver_sql(
                f'CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $sd$ {body} $sd$'
            )
            for event, when, ref in (('ins', 'INSERT', 'NEW TABLE AS new_rows'), ('upd', 'UPDATE', 'NEW TABLE AS new_rows'),
                                     ('del', 'DELETE', 'OLD TABLE AS old_rows')):
                trigger = self._quote(self.trigger_name(table, event))
                conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {trigger} ON {name}')
                conn.exec_driver_sql(
                    f'CREATE TRIGGER {trigger} AFTER {when} ON {name} REFERENCING {ref} '
                    f'FOR EACH STATEMENT EXECUTE FUNCTION {function}()'
                )

    def remove_capture(self, table: str) -> None:
        with self.begin() as conn:
            for event in ('ins', 'upd', 'del'):
                conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {self._quote(self.trigger_name(table, event))} '
                                     f'ON {self._quote(table)}')
            conn.exec_driver_sql(f'DROP FUNCTION IF EXISTS {self._quote(self.trigger_name(table, "fn"))}()')

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        return uri if '+' in scheme else f'postgresql+psycopg://{rest}'

    def engine_options(self) -> dict[str, Any]:
        return {'pool_pre_ping': True}

    @functools.cached_property
    def has_pgvector(self) -> bool:
        """Whether the database has the ``vector`` extension (created here when it is available but not yet on)."""
        with self.engine.connect() as conn:
            if conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'vector'").first():
                return True
            if not conn.exec_driver_sql("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").first():
                return False
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql('CREATE EXTENSION IF NOT EXISTS vector')
        except sa.exc.DBAPIError:
            return False
        return True

    def native_vectors(self, table: str, field: str) -> bool:
        return isinstance(self.table(table).c[field].type, PgVector)

    def field_type(self, ftype: FieldType) -> Any:
        if isinstance(ftype, Vector) and ftype.dtype == 'float32' and self.has_pgvector:
            return PgVector(ftype.dim)
        return super().field_type(ftype)

    def server_side_cursor(self, dbapi_connection: Any) -> Any:
        return dbapi_connection.cursor(name=f'superduper_{uuid.uuid4().hex[:16]}')

    def column_type(self, storage: str) -> Any:
        if storage == 'json':
            return postgresql.JSONB(none_as_null=True)
        if storage == 'bytes':
            return postgresql.BYTEA()
        return super().column_type(storage)
