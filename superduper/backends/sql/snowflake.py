"""Snowflake through snowflake-connector-python and its SQLAlchemy dialect (snowflake-sqlalchemy):
``snowflake://user:password@account/database/schema?warehouse=...&role=...``.

- No triggers: other clients' writes are found by polling (``superduper.backends.sql.polling``) with a row hash of
  ``HASH(<every column>)`` cast to text; as on DuckDB and ClickHouse, only the process that has the database open
  follows them (workers do not: ``workers_follow`` is false). Each poll scans the followed table and its seen table:
  it runs on the warehouse, so set ``poll_interval`` to what you mean to pay for.
- Primary keys are declared but not enforced by Snowflake. Every write that must not duplicate a key is a
  ``MERGE`` (which locks its table, so two of them cannot both insert one key): upserts, the metadata's
  insert-if-absent rows (``insert_absent``), and plain inserts of rows that give their key, which fail as a
  duplicate key does elsewhere when fewer rows were inserted than given. A ``MERGE`` carries up to
  ``MERGE_ROWS`` rows.
- Vectors are stored as float32 bytes (``BINARY``) and searched in process: Snowflake's ``VECTOR(FLOAT, n)`` and
  ``VECTOR_COSINE_SIMILARITY`` are not used because fakesnow (the emulator the tests run on) cannot create a
  ``VECTOR`` column (it passes ``VECTOR(DOUBLE, n)`` to DuckDB, a parser error), so a search in the warehouse
  could not be tested.
- ``host``, ``port`` and ``protocol`` in the query (a private link, a proxy, a local emulator) are given to the
  connector as connection arguments, which the dialect refuses to read from a URL.
"""

from __future__ import annotations

import math
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode

import sqlalchemy as sa
import sqlalchemy.orm.context as _orm_context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles

# snowflake-sqlalchemy before 2.0 (the releases for snowflake-connector-python < 5) subclasses SQLAlchemy 2.0's
# ORMSelectCompileState, which SQLAlchemy 2.1 renamed: give it the old name before the dialect is imported
if not hasattr(_orm_context, 'ORMSelectCompileState') and hasattr(_orm_context, '_ORMSelectCompileState'):
    _orm_context.ORMSelectCompileState = _orm_context._ORMSelectCompileState

import snowflake.sqlalchemy  # noqa: E402,F401  (the dialect: an ImportError names the extra to install)

from superduper.backends.base import Capabilities  # noqa: E402
from superduper.backends.feed import chunks  # noqa: E402
from superduper.backends.sql.base import SQLDataBackend, _redact  # noqa: E402
from superduper.base.exceptions import ConfigError, DatabaseError  # noqa: E402

#: connection arguments the dialect refuses in a URL's query (it reads them only from ``connect_args``)
CONNECT_ARGS = ('host', 'port', 'protocol')
#: rows per MERGE statement (Snowflake compiles each; very large statements are slow to compile)
MERGE_ROWS = 1000


class JSONText(sa.JSON):
    """JSON kept as its text in a VARCHAR: Snowflake's VARIANT takes values only from ``PARSE_JSON``, which a
    ``VALUES`` list (every insert here) cannot hold."""

    cache_ok = True


@compiles(JSONText, 'snowflake')
def _json_text(element: Any, compiler: Any, **kw: Any) -> str:
    return 'VARCHAR'


class SnowflakeDataBackend(SQLDataBackend):
    scheme = 'snowflake'
    tested = 'fakesnow: five tests in CI; the shared suite on request (SUPERDUPER_TEST_FAKESNOW=1), not all green'
    # no triggers (polling), no SKIP LOCKED, no INSERT ... RETURNING; transactions (explicit, autocommit off); MERGE upserts; 255-character names
    capabilities = Capabilities(change_capture='polling', skip_locked=False, transactions=True, upsert=True,
                                identifier_limit=255, generated_keys=False)
    epoch_sql = 'DATE_PART(EPOCH_MICROSECOND, CURRENT_TIMESTAMP()) / 1000000.0'

    def __init__(self, uri: str):
        self._connect_args: dict[str, Any] = {}
        super().__init__(uri)

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        return cls._split(uri)[0]

    @classmethod
    def _split(cls, uri: str) -> tuple[str, dict[str, Any]]:
        """The dialect's URL, and the connection arguments taken out of its query."""
        scheme, _, rest = uri.partition('://')
        if '+' in scheme:
            raise ConfigError(f'{_redact(uri)!r}: write snowflake://user:password@account/database/schema')
        base, _, query = rest.partition('?')
        params = parse_qsl(query, keep_blank_values=True)
        connect = {k: v for k, v in params if k in CONNECT_ARGS}
        kept = [(k, v) for k, v in params if k not in CONNECT_ARGS]
        if 'port' in connect:
            try:
                connect['port'] = int(connect['port'])
            except ValueError:
                raise ConfigError(f'{_redact(uri)!r}: port {connect["port"]!r} is not a number') from None
        url = f'snowflake://{base}' + (f'?{urlencode(kept)}' if kept else '')
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as e:
            raise ConfigError(f'cannot use database URI {_redact(uri)!r}: {e}') from e
        if not parsed.host:
            raise ConfigError(f'{_redact(uri)!r} names no Snowflake account; write '
                              'snowflake://user:password@<account>/<database>/<schema>?warehouse=<warehouse>')
        if not parsed.database:
            raise ConfigError(f'{_redact(uri)!r} names no database; write '
                              'snowflake://user:password@<account>/<database>/<schema>?warehouse=<warehouse>')
        if parsed.database.count('/') > 1:
            raise ConfigError(f'{_redact(uri)!r}: the path is <database>/<schema>, not {parsed.database!r}')
        return url, connect

    def engine_options(self) -> dict[str, Any]:
        connect = self._split(self.uri)[1]
        if connect:
            # a server reached at its own host (an emulator, a proxy): no telemetry sent elsewhere
            connect.setdefault('session_parameters', {'CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED': False})
        return {'connect_args': connect, 'pool_pre_ping': True}

    def configure_engine(self) -> None:
        # words Snowflake reserves that the dialect's list lacks (``AT``, ``BEFORE``: time travel clauses)
        self.dialect.identifier_preparer.reserved_words |= {'at', 'before', 'changes', 'match_recognize', 'qualify'}

    def where(self) -> str:
        url = self.engine.url
        user = f'{url.username}@' if url.username else ''
        return f'Snowflake database {url.database!r} of account {user}{url.host}'

    # ---- names: the dialect quotes only names that need it, so unquoted lowercase names are Snowflake's
    # case-insensitive (uppercase) ones; SQL written here must name tables the same way
    def sql_name(self, name: str) -> str:
        return self.dialect.identifier_preparer.quote(name)

    # ---- types --------------------------------------------------------------------------------------------
    def column_type(self, storage: str) -> Any:
        from snowflake.sqlalchemy import TIMESTAMP_NTZ

        if storage == 'json':
            return JSONText(none_as_null=True)
        if storage == 'datetime':
            return TIMESTAMP_NTZ()
        return super().column_type(storage)

    # ---- writes ---------------------------------------------------------------------------------------------
    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str) -> None:
        return None  # a MERGE over the rows (``insert``)

    def insert(self, conn: Connection, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> None:
        table = self.table(name)
        key = [c.name for c in table.primary_key.columns]
        if upsert_key is None and not (key and set(key) <= set(keys)):  # keys the database makes
            return super().insert(conn, name, keys, columns)
        self._check_sizes(name, keys, columns)
        if upsert_key is not None:
            with self.errors('insert into', name):
                self._merge(conn, table, keys, [upsert_key], columns, update=True)
            return
        # Snowflake stores a second row with a key it has (primary keys are not enforced): a MERGE inserts only the
        # absent ones, and fewer rows inserted than given is the duplicate key other databases refuse
        _refuse_repeated(name, key, keys, columns)
        with self.errors('insert into', name):
            inserted = self._merge(conn, table, keys, key, columns, update=False)
        if inserted < len(columns[0]):
            raise DatabaseError(f'insert into table {name!r} failed: {len(columns[0]) - inserted} of the rows have '
                                f'a primary key ({", ".join(key)}) the table holds already')

    def insert_returning(self, conn: Connection, name: str, rows: list[dict]) -> list[tuple]:
        raise DatabaseError(f'Snowflake hands back no keys it makes (no INSERT ... RETURNING): rows inserted into '
                            f'{name!r} need their key ({", ".join(c.name for c in self.table(name).primary_key)})')

    def insert_absent(self, conn: Connection, table: sa.Table, row: dict[str, Any]) -> bool:
        """Insert ``row`` unless its primary key is there (Snowflake does not enforce primary keys; a ``MERGE``
        locks the table, so two of them do not both insert); whether it did."""
        keys = list(row)
        on = [c.name for c in table.primary_key.columns]
        with self.errors('insert into', table.name):
            return self._merge(conn, table, keys, on, [[row[k]] for k in keys], update=False) > 0

    def _merge(self, conn: Connection, table: sa.Table, keys: Sequence[str], on: Sequence[str], columns: list[list],
               update: bool) -> int:
        """``MERGE`` the rows (``columns`` of ``keys``) on the ``on`` columns, a chunk at a time; the number of rows
        inserted."""
        processors = [table.c[k].type._cached_bind_processor(self.dialect) for k in keys]
        columns = [list(map(p, c)) if p else c for p, c in zip(processors, columns)]
        # binary values travel as hex text and are converted in the MERGE's SELECT (a hex literal in VALUES is read
        # as a number by some SQL engines)
        binary = [isinstance(table.c[k].type, sa.LargeBinary) for k in keys]
        columns = [[None if v is None else bytes(v).hex() for v in c] if b else c for b, c in zip(binary, columns)]
        columns = [_float_text(c) if isinstance(table.c[k].type, sa.Float) else c for k, c in zip(keys, columns)]
        inserted = 0
        for part in chunks(list(zip(*columns)), MERGE_ROWS):
            sql, params = self._merge_sql(table, keys, on, part, update)
            counts = conn.exec_driver_sql(sql, params).first()  # rows inserted[, rows updated]
            inserted += int(counts[0]) if counts else 0
        return inserted

    def _merge_sql(self, table: sa.Table, keys: Sequence[str], on: Sequence[str], rows: Sequence[tuple],
                   update: bool) -> tuple[str, Any]:
        """``MERGE INTO table USING (VALUES ...)``: a row whose ``on`` columns match replaces the stored one
        (``update``) or is left out, the others are inserted; for the connector's ``pyformat`` parameters."""
        q = self.sql_name
        placeholders = '(' + ', '.join(['%s'] * len(keys)) + ')'
        selected = ', '.join(self._selected(table.c[k].type, q(k)) for k in keys)
        source = (f'(SELECT {selected} FROM (VALUES {", ".join([placeholders] * len(rows))}) '
                  f'AS v ({", ".join(q(k) for k in keys)}))')
        match = ' AND '.join(f't.{q(k)} = s.{q(k)}' for k in on)
        others = [k for k in keys if k not in on]
        sql = f'MERGE INTO {q(table.name)} AS t USING {source} AS s ON {match}'
        if update and others:
            sql += ' WHEN MATCHED THEN UPDATE SET ' + ', '.join(f't.{q(k)} = s.{q(k)}' for k in others)
        sql += (f' WHEN NOT MATCHED THEN INSERT ({", ".join(q(k) for k in keys)}) '
                f'VALUES ({", ".join(f"s.{q(k)}" for k in keys)})')
        return sql.replace('%', '%%').replace('%%s', '%s'), tuple(v for row in rows for v in row)

    def _selected(self, column_type: Any, name: str) -> str:
        """A column of the ``MERGE``'s rows as its table's type: binary travels as hex text, floats maybe as text,
        and a ``VALUES`` column of NULLs has no type of its own."""
        if isinstance(column_type, sa.LargeBinary):
            return f"TO_BINARY(v.{name}, 'HEX') AS {name}"
        if isinstance(column_type, sa.types.NullType):  # a reflected type not known here: as the rows give it
            return f'v.{name}'
        return f'CAST(v.{name} AS {column_type.compile(dialect=self.dialect)}) AS {name}'

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        raise NotImplementedError('Snowflake has no INSERT ... ON CONFLICT (no trigger feed here: polling)')

    def metadata_store(self) -> Any:
        from superduper.backends.sql.metadata import SQLMetadataStore

        return SQLMetadataStore(self.engine, merge=self.insert_absent)

    def row_hash(self, table: sa.Table) -> Any:
        return sa.cast(sa.func.hash(*table.columns), sa.String)

    # ---- reflection: the dialect's reads information_schema in ways emulators lack; two plain queries ----
    def _reflect(self, name: str) -> sa.Table:
        stored = self.dialect.denormalize_name(name)
        with self.engine.connect() as conn:
            columns = conn.execute(sa.text(
                'SELECT column_name, data_type FROM information_schema.columns '
                'WHERE table_name = :t AND table_schema = current_schema() ORDER BY ordinal_position'
            ), {'t': stored}).all()
            keys = self._primary_key_columns(conn, stored)
        return sa.Table(name, sa.MetaData(), *[
            sa.Column(self.dialect.normalize_name(c), _snowflake_type(t), primary_key=c in keys) for c, t in columns
        ])

    def _primary_key_columns(self, conn: Connection, stored: str) -> set[str]:
        rows = conn.exec_driver_sql(f'SHOW PRIMARY KEYS IN TABLE {self.sql_name(self.dialect.normalize_name(stored))}')
        names = list(rows.keys())
        if 'column_name' not in names:
            return set()
        i = names.index('column_name')
        return {r[i] for r in rows}


def _float_text(values: list) -> list:
    """Floats as the text Snowflake casts back to the same double (``NaN`` and infinities have no literal the
    connector writes), where a column holds one that is not finite."""
    if all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in values):
        return values
    # the dialect's processor gives some as text already
    return [v if v is None or isinstance(v, str) else repr(float(v)) for v in values]


def _refuse_repeated(name: str, key: list[str], keys: Sequence[str], columns: list[list]) -> None:
    """Fail as a duplicate key does on a key given twice in the rows of one insert."""
    values = list(zip(*[columns[list(keys).index(k)] for k in key]))
    if len(set(values)) < len(values):
        seen: set = set()
        repeated = next(v for v in values if v in seen or seen.add(v))
        shown = repeated[0] if len(key) == 1 else repeated
        raise DatabaseError(f'insert into table {name!r} failed: the rows give the primary key {shown!r} twice')


_SNOWFLAKE_TYPES = {
    'TEXT': sa.String, 'VARCHAR': sa.String, 'STRING': sa.String, 'CHAR': sa.String, 'BOOLEAN': sa.Boolean,
    'FLOAT': sa.Double, 'DOUBLE': sa.Double, 'REAL': sa.Double, 'BINARY': sa.LargeBinary, 'VARBINARY': sa.LargeBinary,
    'TIMESTAMP_NTZ': sa.DateTime, 'TIMESTAMP': sa.DateTime, 'DATETIME': sa.DateTime, 'DATE': sa.Date, 'TIME': sa.Time,
    'BIGINT': sa.BigInteger, 'INTEGER': sa.BigInteger, 'INT': sa.BigInteger,
}


def _snowflake_type(name: str) -> Any:
    base = name.split('(', 1)[0].strip().upper()
    if base in ('NUMBER', 'DECIMAL', 'NUMERIC'):
        scale = name.split(',')[1].strip(' )') if ',' in name else '0'
        return sa.BigInteger() if scale == '0' else sa.Numeric()
    if base in ('VARIANT', 'OBJECT', 'ARRAY'):
        return sa.JSON(none_as_null=True)
    factory = _SNOWFLAKE_TYPES.get(base)
    return factory() if factory else sa.types.NullType()

