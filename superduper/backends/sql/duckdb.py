"""DuckDB through duckdb-engine: ``duckdb://file.duckdb`` or ``duckdb://:memory:``."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import sqlalchemy as sa
from superduper.backends.sql.serial_pool import SerialPool

from superduper.backends.base import Capabilities
from superduper.backends.sql.arrow_rows import arrow_table
from superduper.backends.sql.base import SQLDataBackend
from superduper.backends.sql.duckdb_vectors import DuckDBVectorSearcher, DuckVector
from superduper.backends.sql.sqlite import file_path, missing_file
from superduper.base.exceptions import ConfigError
from superduper.components.datatype import FieldType, Vector


class DuckDBDataBackend(SQLDataBackend):
    scheme = 'duckdb'
    tested = 'the shared suite, in CI'
    # names: duckdb-engine's dialect (PostgreSQL's) refuses identifiers over 63 characters
    capabilities = Capabilities(change_capture='polling', upsert=True, native_vectors=True, shared=False,
                                identifier_limit=63,
                                unshared_reason='DuckDB opens a database file in one process at a time')
    epoch_sql = 'epoch(current_timestamp)'
    # a DuckDB connection invalidates an open result when it runs another statement: read results whole
    streams_results = False

    def __init__(self, uri: str):
        path = file_path(uri)
        if path is not None and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        super().__init__(uri)
        if path is None:  # nobody else can write an in-memory database: nothing to poll
            self.capabilities = dataclasses.replace(self.capabilities, change_capture='none', persistent=False)
        # duckdb-engine quotes by PostgreSQL's keyword list; DuckDB reserves more words (``by``, ...)
        with self.engine.connect() as conn:
            keywords = conn.exec_driver_sql(
                "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'"
            ).scalars()
            self.dialect.identifier_preparer.reserved_words |= set(keywords)

    @classmethod
    def shareable_uri(cls, uri: str, base_dir: str) -> str:
        raise ConfigError(f'DuckDB opens {uri!r} in one process at a time')

    @classmethod
    def missing(cls, uri: str) -> str | None:
        return missing_file(uri, 'DuckDB')

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        path = file_path(uri)
        return 'duckdb:///:memory:' if path is None else f'duckdb:///{path}'

    def engine_options(self) -> dict[str, Any]:
        # one process-wide connection: DuckDB allows a single writer, and ':memory:' is per connection
        return {'poolclass': SerialPool}

    def field_type(self, ftype: FieldType) -> Any:
        if isinstance(ftype, Vector) and ftype.dtype == 'float32':
            return DuckVector(ftype.dim)
        return super().field_type(ftype)

    def native_vectors(self, table: str, field: str) -> bool:
        return isinstance(self.table(table).c[field].type, DuckVector)

    def native_searcher(self, db: Any, index: Any) -> Any:
        """DuckDB's own exact search over the index's outputs (where ``native_vectors``)."""
        return DuckDBVectorSearcher(db, index)

    def insert(
        self, conn: Any, name: str, keys: Sequence[str], columns: list[list], upsert_key: str | None = None
    ) -> None:
        arrow = self._arrow_rows(name, keys, columns)
        if arrow is not None:  # one statement reading the batch in place, as DuckDB users insert
            sql = self._insert_from_rows(name, tuple(keys), upsert_key)
            with self.errors('insert into', name):
                conn.exec_driver_sql('register', (ROWS_VIEW, arrow))
                conn.exec_driver_sql(sql)
            # not after a failure: DuckDB refuses it in the aborted transaction (the next insert replaces the view)
            conn.connection.dbapi_connection.unregister(ROWS_VIEW)
            return
        # the driver's executemany runs one statement a row on DuckDB; SQLAlchemy batches rows into VALUES lists
        rows = [dict(zip(keys, values)) for values in zip(*columns)]
        table = self.table(name)
        stmt = table.insert() if upsert_key is None else self.upsert_statement(table, keys, upsert_key)
        with self.errors('insert into', name):
            conn.execute(stmt, rows)

    def _arrow_rows(self, name: str, keys: Sequence[str], columns: list[list]) -> Any | None:
        table = self.table(name)
        types = [table.c[k].type for k in keys]
        processed = [list(map(p, values)) if (p := t._cached_bind_processor(self.dialect)) else values
                     for t, values in zip(types, columns)]
        return arrow_table(keys, processed, [_arrow_kind(t) for t in types])

    def _insert_from_rows(self, name: str, keys: tuple[str, ...], upsert_key: str | None) -> str:
        """``INSERT INTO name (keys) SELECT ... FROM`` the registered rows, upserting on ``upsert_key``."""
        cache_key = (name, keys, upsert_key, ROWS_VIEW)
        if cache_key not in self._insert_sql:
            source = sa.select(*[sa.column(k) for k in keys]).select_from(sa.table(ROWS_VIEW))
            stmt = self.conflict_insert(self.table(name)).from_select(list(keys), source)
            if upsert_key is not None:
                updates = {k: stmt.excluded[k] for k in keys if k != upsert_key}
                stmt = (stmt.on_conflict_do_update(index_elements=[upsert_key], set_=updates) if updates
                        else stmt.on_conflict_do_nothing(index_elements=[upsert_key]))
            self._insert_sql[cache_key] = (str(stmt.compile(dialect=self.dialect)), None)
        return self._insert_sql[cache_key][0]

    def row_hash(self, table: sa.Table) -> Any:
        return sa.cast(sa.func.hash(*table.columns), sa.String)

    def _reflect(self, name: str) -> sa.Table:
        # SQLAlchemy's PostgreSQL reflection, which duckdb-engine reuses, queries catalogs DuckDB lacks
        with self.engine.connect() as conn:
            columns = conn.exec_driver_sql(
                'SELECT column_name, data_type FROM information_schema.columns '
                'WHERE table_name = ? AND table_schema = current_schema() ORDER BY ordinal_position',
                (name,),
            ).all()
            keys = conn.exec_driver_sql(
                "SELECT constraint_column_names FROM duckdb_constraints() "
                "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'",
                (name,),
            ).scalars().all()
        primary = set(keys[0]) if keys else set()
        return sa.Table(
            name,
            sa.MetaData(),
            *[sa.Column(c, _duckdb_type(t), primary_key=c in primary) for c, t in columns],
        )


#: the name the rows of an insert are registered under while it runs (one statement at a time: ``SerialPool``)
ROWS_VIEW = '_superduper_insert_rows'
#: the Arrow kind (``superduper.backends.sql.arrow_rows``) of each column type inserted through Arrow
_ARROW_KINDS: list[tuple[type, str]] = [
    (sa.Boolean, 'bool_'), (sa.Integer, 'int64'), (sa.Float, 'float64'), (sa.String, 'string'), (sa.JSON, 'string'),
    (sa.LargeBinary, 'binary'), (sa.DateTime, 'timestamp'),
]


def _arrow_kind(column_type: Any) -> str | None:
    return next((kind for sa_type, kind in _ARROW_KINDS if isinstance(column_type, sa_type)), None)


_DUCKDB_TYPES = {
    'VARCHAR': sa.String, 'TEXT': sa.String, 'BIGINT': sa.BigInteger, 'INTEGER': sa.Integer,
    'SMALLINT': sa.SmallInteger, 'TINYINT': sa.SmallInteger, 'HUGEINT': sa.BigInteger, 'UBIGINT': sa.BigInteger,
    'UINTEGER': sa.BigInteger, 'DOUBLE': sa.Double, 'FLOAT': sa.Float, 'REAL': sa.Float, 'BOOLEAN': sa.Boolean,
    'BLOB': sa.LargeBinary, 'JSON': lambda: sa.JSON(none_as_null=True), 'TIMESTAMP': sa.DateTime,
    'DATE': sa.Date, 'TIME': sa.Time, 'UUID': sa.Uuid,
}


def _duckdb_type(name: str) -> Any:
    vector = re.fullmatch(r'FLOAT\[(\d+)\]', name.strip().upper())
    if vector:
        return DuckVector(int(vector.group(1)))
    base = name.split('(', 1)[0].strip().upper()
    if base == 'DECIMAL':
        return sa.Numeric()
    factory = _DUCKDB_TYPES.get(base)
    return factory() if factory else sa.types.NullType()
