"""PostgreSQL through psycopg 3: ``postgresql://user@host/db`` or ``postgres://...``."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from superduper.backends.base import Capabilities
from superduper.backends.sql.base import EVENTS, SQLDataBackend
from superduper.backends.sql.changes import CHANGES
from superduper.backends.sql.pgvector import PgVector, PgVectorSearcher

SESSION_CLAIM = 'superduper.claim'  # the claim a superduper write gives its change rows (a transaction setting)
from superduper.components.datatype import FieldType, Vector


class PostgresDataBackend(SQLDataBackend):
    scheme = 'postgresql'
    tested = 'the shared suite on a PostgreSQL server (pgvector on PostgreSQL 16 from pgserver), in CI'
    needs_database_name = True
    capabilities = Capabilities(change_capture='triggers', skip_locked=True, upsert=True, native_vectors=True,
                                identifier_limit=63, full_text='tsvector')
    epoch_sql = 'extract(epoch from clock_timestamp())'

    def capture_ddl(self, table: str, key: list[str]) -> list[str]:
        # statement-level triggers with transition tables: a bulk write costs one INSERT ... SELECT, not one a row
        function = self.sql_name(self.trigger_name(table, 'fn'))
        name, literal, now = self.sql_name(table), self.sql_literal(table), self.epoch_sql
        claim = f"NULLIF(current_setting('{SESSION_CLAIM}', true), '')::bigint"  # set by superduper's own writes
        insert = f'INSERT INTO {CHANGES} (tbl, source, claim, created) SELECT {literal}, k, {claim}, {now} FROM'
        new_keys, old_keys = f'SELECT {self.key_text_sql("n", key)} AS k FROM new_rows n', \
            f'SELECT {self.key_text_sql("o", key)} AS k FROM old_rows o'
        body = (
            f"BEGIN IF TG_OP = 'INSERT' THEN {insert} ({new_keys}) AS keys; "
            f"ELSIF TG_OP = 'UPDATE' THEN {insert} ({new_keys} UNION {old_keys}) AS keys; "  # a changed key: both
            f"ELSE {insert} ({old_keys}) AS keys; END IF; RETURN NULL; END"
        )
        tag = '$sd$'
        while tag in body:
            tag = tag[:-1] + 'x$'
        statements = [f'CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {tag}{body}{tag}']
        refs = {'ins': ('INSERT', 'NEW TABLE AS new_rows'), 'upd': ('UPDATE', 'OLD TABLE AS old_rows NEW TABLE AS new_rows'),
                'del': ('DELETE', 'OLD TABLE AS old_rows')}
        for event in EVENTS:
            trigger = self.sql_name(self.trigger_name(table, event))
            when, ref = refs[event]
            statements.append(f'DROP TRIGGER IF EXISTS {trigger} ON {name}')
            statements.append(f'CREATE TRIGGER {trigger} AFTER {when} ON {name} REFERENCING {ref} '
                              f'FOR EACH STATEMENT EXECUTE FUNCTION {function}()')
        return statements

    def drop_capture_ddl(self, table: str) -> list[str]:
        name = self.sql_name(table)
        drops = [f'DROP TRIGGER IF EXISTS {self.sql_name(self.trigger_name(table, e))} ON {name}' for e in EVENTS]
        return drops + [f'DROP FUNCTION IF EXISTS {self.sql_name(self.trigger_name(table, "fn"))}()']

    def mark_writes(self, conn: Connection, claim: int, changes: sa.Table) -> Any:
        conn.execute(sa.select(sa.func.set_config(SESSION_CLAIM, str(claim), True)))

    def unmark_writes(self, conn: Connection, claim: int, mark: Any, changes: sa.Table) -> None:
        conn.execute(sa.select(sa.func.set_config(SESSION_CLAIM, '', True)))

    def rows_parameter_sql(self) -> str | None:
        return 'unnest(CAST(:d AS text[]), CAST(:src AS text[]), CAST(:e AS text[])) AS r(d, src, e)'

    def rows_parameter(self, rows: list[tuple[str, str, str | None]]) -> dict[str, Any]:
        d, src, e = zip(*rows)
        return {'d': list(d), 'src': list(src), 'e': list(e)}

    def key_text(self, columns: Any) -> Any:
        if len(columns) == 1:
            return sa.cast(columns[0], sa.Text)
        return sa.cast(sa.func.json_build_array(*columns), sa.Text)

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        return uri if '+' in scheme else f'postgresql+psycopg://{rest}'

    def engine_options(self) -> dict[str, Any]:
        return {'pool_pre_ping': True}

    def configure_engine(self) -> None:
        # a reflected VECTOR(n) column is pgvector's type (SQLAlchemy would reflect an untyped column, whose values
        # would then be sent as bytes: a table is reflected again after another process applied a component)
        self.dialect.ischema_names = {**self.dialect.ischema_names, 'vector': PgVector}

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

    def describe(self, name: str) -> tuple[dict[str, str], tuple[str, ...]]:
        kinds, primary_key = super().describe(name)
        for column in self.table(name).columns:  # another program's VECTOR(n) column holds vectors
            if isinstance(column.type, PgVector):
                kinds[column.name] = f'vector[float32:{column.type.dim}]'
        return kinds, primary_key

    def native_vectors(self, table: str, field: str) -> bool:
        return isinstance(self.table(table).c[field].type, PgVector)

    def native_searcher(self, db: Any, index: Any) -> Any:
        """pgvector's search over the index's outputs (where ``native_vectors``)."""
        return PgVectorSearcher(db, index)

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
