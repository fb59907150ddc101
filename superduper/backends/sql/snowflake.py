"""Snowflake through snowflake-connector-python and its SQLAlchemy dialect (snowflake-sqlalchemy):
``snowflake://user:password@account/database/schema?warehouse=...&role=...``.

Snowflake has no triggers: only writes made through superduper are followed (``change_capture='none'``). Upserts
are one ``MERGE`` per chunk of rows. ``host``, ``port`` and ``protocol`` in the query (a private link, a proxy, a
local emulator) are given to the connector as connection arguments, which the dialect refuses to read from a URL.

Primary keys are declared but, on standard tables, not enforced by Snowflake: see the project's notes on what the
metadata store's insert-if-absent relies on.
"""

from __future__ import annotations

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
from superduper.base.exceptions import ConfigError  # noqa: E402

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
    tested = 'fakesnow, on request (SUPERDUPER_TEST_FAKESNOW=1), not all green'
    # no triggers, no SKIP LOCKED; transactions (explicit, autocommit off); MERGE upserts; 255-character names
    capabilities = Capabilities(change_capture='none', skip_locked=False, transactions=True, upsert=True,
                                identifier_limit=255)
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
        if upsert_key is None:
            return super().insert(conn, name, keys, columns)
        self._check_sizes(name, keys, columns)
        table = self.table(name)
        processors = [table.c[k].type._cached_bind_processor(self.dialect) for k in keys]
        columns = [list(map(p, c)) if p else c for p, c in zip(processors, columns)]
        # binary values travel as hex text and are converted in the MERGE's SELECT (a hex literal in VALUES is read
        # as a number by some SQL engines)
        binary = [isinstance(table.c[k].type, sa.LargeBinary) for k in keys]
        columns = [[None if v is None else bytes(v).hex() for v in c] if b else c for b, c in zip(binary, columns)]
        rows = list(zip(*columns))
        with self.errors('insert into', name):
            for part in chunks(rows, MERGE_ROWS):
                sql, params = self._merge_sql(table, keys, upsert_key, part)
                conn.exec_driver_sql(sql, params)

    def _merge_sql(self, table: sa.Table, keys: Sequence[str], key: str, rows: Sequence[tuple]) -> tuple[str, Any]:
        """``MERGE INTO table USING (VALUES ...)``: each row's key inserts it or replaces the stored row; for
        the connector's ``pyformat`` parameters."""
        q = self.sql_name
        placeholders = '(' + ', '.join(['%s'] * len(keys)) + ')'
        selected = ', '.join(f"TO_BINARY(v.{q(k)}, 'HEX') AS {q(k)}" if isinstance(table.c[k].type, sa.LargeBinary)
                             else f'v.{q(k)}' for k in keys)
        source = (f'(SELECT {selected} FROM (VALUES {", ".join([placeholders] * len(rows))}) '
                  f'AS v ({", ".join(q(k) for k in keys)}))')
        others = [k for k in keys if k != key]
        sql = f'MERGE INTO {q(table.name)} AS t USING {source} AS s ON t.{q(key)} = s.{q(key)}'
        if others:
            sql += ' WHEN MATCHED THEN UPDATE SET ' + ', '.join(f't.{q(k)} = s.{q(k)}' for k in others)
        sql += (f' WHEN NOT MATCHED THEN INSERT ({", ".join(q(k) for k in keys)}) '
                f'VALUES ({", ".join(f"s.{q(k)}" for k in keys)})')
        return sql.replace('%', '%%').replace('%%s', '%s'), tuple(v for row in rows for v in row)

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        raise NotImplementedError('Snowflake has no INSERT ... ON CONFLICT; the change feed here is in memory')

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

