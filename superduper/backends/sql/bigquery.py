"""Google BigQuery through google-cloud-bigquery and sqlalchemy-bigquery: ``bigquery://project/dataset``
(the dialect's options in the query: ``?location=EU&credentials_path=/key.json``; without credentials, the
application default ones). ``?api_endpoint=http://127.0.0.1:9050`` reaches a local emulator without credentials.

Every statement superduper sends is compiled and parsed in the tests (``tests/test_dialects.py``), none has run on
BigQuery itself. ``tests/test_bigquery_emulator.py`` runs tables, keys, polling and the filtered search on the local
emulator (``local-bigquery`` 0.3.2, which needs Python 3.13 and so a venv of its own: ``tests/bigquery_emulator.py``),
started for the test run, in CI too.

- Primary keys are declared ``NOT ENFORCED`` (BigQuery enforces none): superduper knows a table's key from them,
  but a second row with the same key is stored, so the metadata's insert-if-absent writes are safe for one
  process at a time (``shared=False``).
- Each statement is its own job and commits alone: BigQuery's multi-statement transactions live in scripts and
  sessions, which the DB-API driver does not open (its ``commit`` does nothing), so ``transactions=False``.
- Upserts are ``MERGE``: a listener's outputs one statement per chunk of up to ``MERGE_ROWS`` rows (``MergeRows``,
  each DML statement being a job of its own, queued per table by BigQuery); a poll's seen rows and the metadata's
  insert-if-absent writes one statement a row. Plain inserts are one ``INSERT ... VALUES`` per chunk of rows.
- No triggers: other clients' writes are found by polling (``superduper.backends.sql.polling``) with a row hash of
  ``FARM_FINGERPRINT(TO_JSON_STRING(STRUCT(<every column>)))``. Each poll is one query scanning the followed
  table and its seen table whole, billed by the bytes of every column: set ``poll_interval`` accordingly.
- Vectors are ``ARRAY<FLOAT64>`` columns, searched with ``COSINE_DISTANCE``/``EUCLIDEAN_DISTANCE``
  (``superduper.backends.sql.bigquery_vectors``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl, urlencode

import sqlalchemy as sa
import sqlalchemy_bigquery  # noqa: F401  (the dialect: an ImportError names the extra to install)
from sqlalchemy.dialects import registry
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy_bigquery.base import BigQueryCompiler, BigQueryDDLCompiler, BigQueryDialect

from superduper.backends.base import Capabilities
from superduper.backends.feed import chunks
from superduper.backends.sql.base import SQLDataBackend, _redact
from superduper.backends.sql.bigquery_vectors import BigQueryVectorSearcher, BqVector
from superduper.backends.sql.text_types import JSONText, MergeRow, UUIDText
from superduper.base.exceptions import ConfigError, DatabaseError
from superduper.components.datatype import FieldType, Vector

#: the query parameter naming an emulator's endpoint (taken out of the dialect's URL)
ENDPOINT = 'api_endpoint'
#: the most rows one ``MERGE`` upserts, and the most parameters it takes (BigQuery takes 10,000 a query, and a
#: request of 10 MB)
MERGE_ROWS = 200
MERGE_PARAMETERS = 4000


class MergeRows(Executable, ClauseElement):
    """One ``MERGE`` of many rows, given as parameters (``@r<row>_<column>``) selected ``UNION ALL`` as its source:
    each DML statement is a job of its own on BigQuery (seconds, queued per table), so upserting row by row, as
    ``MergeRow`` with ``executemany`` does, costs a job a row."""

    inherit_cache = False

    def __init__(self, table: sa.Table, columns: Sequence[str], on: Sequence[str], rows: Sequence[Sequence[Any]]):
        self.table, self.columns, self.on = table, list(columns), list(on)
        self.rows = [[sa.bindparam(f'r{i}_{j}', v, type_=table.c[c].type) for j, (c, v) in enumerate(zip(columns, row))]
                     for i, row in enumerate(rows)]


@compiles(MergeRows)
def _merge_rows(element: MergeRows, compiler: Any, **kw: Any) -> str:
    q = compiler.preparer.quote
    selects = [', '.join(compiler.process(p, **kw) + (f' AS {q(c)}' if i == 0 else '')
                         for c, p in zip(element.columns, row))
               for i, row in enumerate(element.rows)]
    source = ' UNION ALL '.join(f'SELECT {s}' for s in selects)
    on = ' AND '.join(f'tgt.{q(c)} = src.{q(c)}' for c in element.on)
    sql = f'MERGE INTO {compiler.preparer.format_table(element.table)} AS tgt USING ({source}) AS src ON ({on})'
    others = [c for c in element.columns if c not in element.on]
    if others:
        sql += ' WHEN MATCHED THEN UPDATE SET ' + ', '.join(f'{q(c)} = src.{q(c)}' for c in others)
    return (sql + f' WHEN NOT MATCHED THEN INSERT ({", ".join(q(c) for c in element.columns)}) '
            f'VALUES ({", ".join(f"src.{q(c)}" for c in element.columns)})')


class _Compiler(BigQueryCompiler):
    # a query parameter's name ends at a hyphen (``@_outputs__my-listener__...``): escaped like SQLAlchemy's others
    bindname_escape_characters = {**BigQueryCompiler.bindname_escape_characters, '-': '_'}


_Compiler._init_bind_translate()


class _DDLCompiler(BigQueryDDLCompiler):
    def visit_primary_key_constraint(self, constraint: Any, **kw: Any) -> str | None:
        if not constraint.columns:
            return None
        names = ', '.join(self.preparer.format_column(c) for c in constraint.columns)
        return f'PRIMARY KEY ({names}) NOT ENFORCED'


class Dialect(BigQueryDialect):
    """sqlalchemy-bigquery's dialect with primary keys declared (``NOT ENFORCED``) and reflected, and parameters
    named after any column."""

    ddl_compiler = _DDLCompiler
    statement_compiler = _Compiler
    supports_statement_cache = False  # as sqlalchemy-bigquery's own (said, so SQLAlchemy does not warn)

    def get_pk_constraint(self, connection: Any, table_name: str, schema: str | None = None, **kw: Any) -> dict:
        constraints = self._get_table(connection, table_name, schema).table_constraints
        key = constraints.primary_key if constraints is not None else None
        return {'constrained_columns': list(key.columns) if key is not None else [], 'name': None}


registry.register('bigquery.superduper', __name__, 'Dialect')


class BigQueryDataBackend(SQLDataBackend):
    scheme = 'bigquery'
    tested = ('tables, polling and vector search on the local emulator (local-bigquery 0.3.2), in CI; '
              'not the shared suite')
    needs_database_name = True  # the dataset
    capabilities = Capabilities(
        change_capture='polling', skip_locked=False, transactions=False, upsert=True, native_vectors=True,
        identifier_limit=300, shared=False,
        unshared_reason='BigQuery enforces no primary keys: the metadata\'s insert-if-absent writes are safe for one '
                        'process at a time')
    epoch_sql = 'UNIX_MICROS(CURRENT_TIMESTAMP()) / 1000000'
    # the DB-API driver reads a query's results through its job: results are read whole
    streams_results = False

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        return cls._split(uri)[0]

    @classmethod
    def _split(cls, uri: str) -> tuple[str, str | None]:
        """The dialect's URL (``bigquery+superduper://project/dataset?...``) and the emulator's endpoint, if any."""
        scheme, _, rest = uri.partition('://')
        if '+' in scheme:
            raise ConfigError(f'{_redact(uri)!r}: write bigquery://<project>/<dataset>')
        base, _, query = rest.partition('?')
        params = parse_qsl(query, keep_blank_values=True)
        endpoint = dict(params).get(ENDPOINT)
        kept = [(k, v) for k, v in params if k != ENDPOINT]
        if endpoint:
            kept.append(('user_supplied_client', 'true'))  # the client is made here (``engine_options``)
        project, _, dataset = base.partition('/')
        if not project or not dataset or '/' in dataset:
            raise ConfigError(f'{_redact(uri)!r}: write bigquery://<project>/<dataset>')
        return f'bigquery+superduper://{base}' + (f'?{urlencode(kept)}' if kept else ''), endpoint

    def engine_options(self) -> dict[str, Any]:
        endpoint = self._split(self.uri)[1]
        if endpoint is None:
            return {}
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        url = sa.engine.make_url(self.sqlalchemy_url(self.uri))
        client = bigquery.Client(
            project=url.host, credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=endpoint),
            default_query_job_config=bigquery.QueryJobConfig(default_dataset=f'{url.host}.{url.database}'))
        return {'connect_args': {'client': client}}

    def where(self) -> str:
        url = self.engine.url
        return f'BigQuery dataset {url.database!r} of project {url.host!r}'

    # ---- types --------------------------------------------------------------------------------------------
    def column_type(self, storage: str) -> Any:
        if storage in ('str', 'any'):
            return sa.String()  # STRING
        if storage == 'json':
            return JSONText(sa.String())  # a JSON column takes no plain string parameter; kept as its text
        if storage == 'uuid':
            return UUIDText()  # STRING: BigQuery has no UUID or CHAR
        return super().column_type(storage)  # INT64, FLOAT64, BOOL, BYTES, DATETIME

    def field_type(self, ftype: FieldType) -> Any:
        if isinstance(ftype, Vector) and ftype.dtype == 'float32':
            return BqVector(ftype.dim)
        return super().field_type(ftype)

    def _reflect(self, name: str) -> sa.Table:
        table = super()._reflect(name)
        for column in table.columns:  # a vector column read back as one (its length is not part of the type)
            if isinstance(column.type, sa.ARRAY) and isinstance(column.type.item_type, sa.Float):
                column.type = BqVector(0)
        return table

    def run_sql(self, conn: Any, sql: str) -> None:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql)  # no parameters: the driver refuses an empty sequence of them
        except self.dialect.loaded_dbapi.Error as e:
            raise DatabaseError(f'{sql.split("(", 1)[0][:80]} failed: {str(e).strip().splitlines()[0]}') from e
        finally:
            cursor.close()

    def native_vectors(self, table: str, field: str) -> bool:
        return isinstance(self.table(table).c[field].type, BqVector)

    def native_searcher(self, db: Any, index: Any) -> Any:
        """BigQuery's own exact search over the index's outputs (where ``native_vectors``)."""
        return BigQueryVectorSearcher(db, index)

    # ---- statements -------------------------------------------------------------------------------------------
    def add_column_sql(self, name: str, field: str, ftype: Any) -> str:
        ddl = self.field_type(ftype).compile(dialect=self.dialect)
        return f'ALTER TABLE {self.sql_name(name)} ADD COLUMN {self.sql_name(field)} {ddl}'

    def insert(self, conn: Any, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> None:
        # the driver runs one job per row of an executemany: one INSERT ... VALUES or MERGE per chunk of rows instead
        table = self.table(name)
        if upsert_key is not None:
            self._check_sizes(name, keys, columns)
            by_key = {row[list(keys).index(upsert_key)]: row for row in zip(*columns)}  # a key's last row wins
            size = max(1, min(MERGE_ROWS, MERGE_PARAMETERS // max(1, len(keys))))
            with self.errors('upsert into', name):
                for part in chunks(list(by_key.values()), size):
                    conn.execute(MergeRows(table, keys, [upsert_key], part))
            return
        rows = [dict(zip(keys, values)) for values in zip(*columns)]
        with self.errors('insert into', name):
            for part in chunks(rows):
                conn.execute(table.insert().values(part))

    @contextlib.contextmanager
    def _read_connection(self) -> Iterator[Any]:
        # the DB-API connection has no rollback (no transactions): a pooled connection for each read
        with self.engine.connect() as conn:
            yield conn.connection.dbapi_connection

    def by_key_parameters(self, names: list[str] | None, values: Sequence[Any]) -> Any:
        return {'keys': list(values)}  # the dialect writes ``IN UNNEST(@keys)``: one array parameter

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str | Sequence[str]) -> Any:
        return MergeRow(table, keys, [key] if isinstance(key, str) else list(key))

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        columns = [c.name for c in table.columns if not c.nullable]  # what the caller's rows give
        return MergeRow(table, columns, key, update=False)

    def key_text(self, columns: Sequence[Any]) -> Any:
        if len(columns) == 1:
            return sa.cast(columns[0], sa.String)
        return sa.func.TO_JSON_STRING(sa.func.JSON_ARRAY(*columns))

    def row_hash(self, table: sa.Table) -> Any:
        return sa.cast(sa.func.FARM_FINGERPRINT(sa.func.TO_JSON_STRING(sa.func.STRUCT(*table.columns))), sa.String)
