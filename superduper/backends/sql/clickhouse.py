"""ClickHouse through clickhouse-connect's SQLAlchemy dialect: ``chdb://path`` (or ``chdb://:memory:``), the engine
embedded in this process by the ``chdb`` package, and ``clickhouse://[user[:password]@]host[:port]/database``, a
server over HTTP (port 8123 by default).

ClickHouse is not a transactional row store, so this dialect adapts it where the shared SQL backend expects one:

- every table is a ``ReplacingMergeTree`` ordered by its primary key, and every read runs with the setting
  ``final = 1``: an insert of an existing key replaces the row (that is the upsert), and reads see one row per key;
  the tables superduper makes take a plain ``UPDATE`` from other clients (lightweight updates are enabled on them);
- a plain insert (not an upsert) first looks for the keys it writes and fails as a duplicate key does elsewhere;
- ``UPDATE`` is the mutation ``ALTER TABLE ... UPDATE`` and ``DELETE`` the lightweight delete, both waited for
  (``mutations_sync``); their row counts are counted before they run (nothing else writes in between on chDB);
- there are no multi-statement transactions (``transactions=False``), triggers or row locks: writes by other
  clients are found by polling row hashes (``change_capture='polling'``, as on DuckDB: ``sql/polling.py``);
- ``LEFT JOIN`` fills unmatched columns with NULL (``join_use_nulls = 1``), as SQL does.
"""

from __future__ import annotations

import dataclasses
import gc
import datetime
import json
import os
import tempfile
from typing import Any, Sequence

import sqlalchemy as sa
from clickhouse_connect import dbapi as ch_dbapi
from clickhouse_connect.cc_sqlalchemy.datatypes.base import ChSqlaType
from clickhouse_connect.cc_sqlalchemy.datatypes.sqltypes import DateTime64
from clickhouse_connect.cc_sqlalchemy.dialect import ClickHouseDialect
from clickhouse_connect.cc_sqlalchemy.sql.compiler import ChStatementCompiler
from clickhouse_connect.cc_sqlalchemy.sql.ddlcompiler import ChDDLCompiler
from clickhouse_connect.driver.binding import quote_identifier
from sqlalchemy.dialects import registry
from superduper.backends.sql.serial_pool import SerialPool

from superduper.backends.base import Capabilities
from superduper.backends.feed import chunks
from superduper.backends.sql.arrow_rows import arrow_table
from superduper.backends.sql.base import SQLDataBackend
from superduper.backends.sql.clickhouse_vectors import ChVector, ClickHouseVectorSearcher
from superduper.backends.sql.sqlite import file_path, missing_file
from superduper.backends.sql.text_types import JSONText, UUIDText
from superduper.base.exceptions import ConfigError, DatabaseError, InvalidValue
from superduper.base.query import Compare
from superduper.components.datatype import FieldType, Vector

#: the dates ``DateTime64`` holds
FIRST_DATE, LAST_DATE = datetime.datetime(1900, 1, 1), datetime.datetime(2299, 12, 31, 23, 59, 59, 999999)
#: table settings that let other clients change rows with a plain ``UPDATE`` (ClickHouse's lightweight updates)
LIGHTWEIGHT_UPDATES = 'enable_block_number_column = 1, enable_block_offset_column = 1'
#: settings of every connection (see the module's docstring)
SETTINGS = {'final': 1, 'mutations_sync': 2, 'lightweight_deletes_sync': 2, 'join_use_nulls': 1}


# ---- column types ---------------------------------------------------------------------------------------------
class UUIDValue(UUIDText):
    """``UUID`` values as ``uuid.UUID`` both ways, in ClickHouse's own ``UUID`` column (the driver returns them so)."""

    as_uuid = True


#: the comment marking a ``String`` column that holds bytes (read as bytes, not decoded as UTF-8)
BYTES = 'superduper:bytes'


def _is_bytes(type_: Any) -> bool:
    if isinstance(type_, sa.types.TypeDecorator):
        type_ = type_.impl_instance
    return isinstance(type_, sa.LargeBinary)


def _type_name(type_: Any, dialect: Any) -> str:
    """The ClickHouse type of a column type (SQLAlchemy's generic ones included)."""
    if isinstance(type_, ChVector):
        return type_.get_col_spec()
    if isinstance(type_, UUIDValue):
        return 'UUID'
    if isinstance(type_, sa.types.TypeDecorator):
        type_ = type_.impl_instance
    if isinstance(type_, ChSqlaType):
        return dialect.type_compiler.process(type_)
    if isinstance(type_, sa.Boolean):
        return 'Bool'
    if isinstance(type_, sa.SmallInteger):
        return 'Int16'
    if isinstance(type_, sa.BigInteger):
        return 'Int64'
    if isinstance(type_, sa.Integer):
        return 'Int32' if type(type_) is sa.Integer else 'Int64'
    if isinstance(type_, sa.Float):
        return 'Float64'
    if isinstance(type_, sa.Numeric):
        return 'Decimal(38, 10)'
    if isinstance(type_, sa.DateTime):
        return 'DateTime64(6)'
    if isinstance(type_, sa.Date):
        return 'Date32'
    if isinstance(type_, sa.Uuid):
        return 'UUID'
    if isinstance(type_, (sa.String, sa.LargeBinary, sa.JSON)):
        return 'String'
    raise sa.exc.CompileError(f'no ClickHouse type for {type_!r}')


# ---- the dialect: engines, mutations, counts, duplicate keys -----------------------------------------------------
class _DDLCompiler(ChDDLCompiler):
    def visit_create_table(self, create: Any, **kw: Any) -> str:
        table = create.element
        if getattr(table, 'engine', None) is not None or table.dialect_options['clickhousedb'].get('engine'):
            return super().visit_create_table(create, **kw)
        key = [quote_identifier(c.name) for c in table.primary_key.columns]
        engine = f'ReplacingMergeTree ORDER BY ({", ".join(key)})' if key else 'MergeTree ORDER BY tuple()'
        engine += f' SETTINGS {LIGHTWEIGHT_UPDATES}'
        columns = ', '.join(self.get_column_specification(c.element) for c in create.columns)
        exists = ' IF NOT EXISTS' if getattr(create, 'if_not_exists', False) else ''
        return f'CREATE TABLE{exists} {self.preparer.format_table(table)} ({columns}) ENGINE = {engine}'

    def get_column_specification(self, column: Any, **kw: Any) -> str:
        if isinstance(column.type, ChSqlaType):
            return super().get_column_specification(column, **kw)
        name = _type_name(column.type, self.dialect)
        if column.nullable and not column.primary_key and not isinstance(column.type, ChVector):  # no Nullable(Array)
            name = f'Nullable({name})'
        if _is_bytes(column.type):
            self.dialect.bytes_columns.setdefault(column.table.name, set()).add(column.name)
            name += f" COMMENT '{BYTES}'"
        return f'{quote_identifier(column.name)} {name}'

    def visit_create_index(self, create: Any, **kw: Any) -> str:
        index = create.element
        columns = ', '.join(quote_identifier(c.name) for c in index.columns)
        return (f'ALTER TABLE {self.preparer.format_table(index.table)} ADD INDEX IF NOT EXISTS '
                f'{quote_identifier(index.name)} ({columns}) TYPE minmax')

    def visit_drop_index(self, drop: Any, **kw: Any) -> str:
        index = drop.element
        return f'ALTER TABLE {self.preparer.format_table(index.table)} DROP INDEX IF EXISTS {quote_identifier(index.name)}'


class _StatementCompiler(ChStatementCompiler):
    def visit_update(self, update_stmt: Any, visiting_cte: Any = None, **kw: Any) -> str:
        """``ALTER TABLE ... UPDATE``: a mutation (waited for, ``mutations_sync``); tables need no settings for it."""
        compile_state = update_stmt._compile_state_factory(update_stmt, self, **kw)
        if not self.stack:
            self.isupdate = True
            self.compile_state = compile_state
        table = update_stmt.table
        parameters = sa.sql.crud._get_crud_params(self, update_stmt, compile_state, False, **kw)[0]
        sets = ', '.join(f'{quote_identifier(c.name)} = {value}' for c, _, value, _ in parameters)
        where = self.process(update_stmt.whereclause, **kw) if update_stmt.whereclause is not None else '1'
        return f'ALTER TABLE {self.preparer.format_table(table)} UPDATE {sets} WHERE {where}'

    def visit_delete(self, delete_stmt: Any, visiting_cte: Any = None, **kw: Any) -> str:
        if not self.stack:
            self.isdelete = True
            self.compile_state = delete_stmt._compile_state_factory(delete_stmt, self, **kw)
        if delete_stmt.whereclause is None:
            return f'DELETE FROM {self.preparer.format_table(delete_stmt.table)} WHERE 1'
        return super().visit_delete(delete_stmt, visiting_cte=visiting_cte, **kw)


class SuperduperClickHouseDialect(ClickHouseDialect):
    """clickhouse-connect's dialect with tables made ``ReplacingMergeTree`` by default, ``UPDATE`` as a mutation,
    true row counts of updates and deletes, and plain inserts that refuse existing keys."""

    driver = 'superduper'
    supports_statement_cache = False
    ddl_compiler = _DDLCompiler
    statement_compiler = _StatementCompiler
    update_returning = False
    delete_returning = False
    insert_returning = False

    @classmethod
    def import_dbapi(cls) -> Any:
        return ch_dbapi

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: per table, its columns holding bytes (marked ``BYTES`` in the database)
        self.bytes_columns: dict[str, set[str]] = {}

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        return _connect(*cargs, **cparams)

    def load_bytes_columns(self, connection: Any) -> None:
        rows = connection.exec_driver_sql(
            'SELECT table, name FROM system.columns WHERE database = currentDatabase() AND comment = %(c)s',
            {'c': BYTES}).all()
        for table, name in rows:
            self.bytes_columns.setdefault(table, set()).add(name)

    def _bytes_read(self, cursor: Any, context: Any) -> None:
        """Tell the connection which result columns of a ``SELECT`` hold bytes."""
        compiled = getattr(context, 'compiled', None)
        if compiled is None or not getattr(compiled, '_result_columns', None):
            return
        stmt = compiled.statement
        if not isinstance(stmt, sa.sql.Select):
            return
        froms = [f for f in stmt.get_final_froms() if isinstance(f, sa.sql.expression.TableClause)]
        only = froms[0].name if len(froms) == 1 else None
        names = []
        for keyname, name, objects, type_ in compiled._result_columns:
            if _is_bytes(type_):
                names.append(keyname)
                continue
            for obj in objects:
                table = getattr(getattr(obj, 'table', None), 'name', None) or only
                if isinstance(obj, sa.sql.ColumnElement) and getattr(obj, 'name', None) in self.bytes_columns.get(table, ()):
                    names.append(keyname)
                    break
        if names:
            cursor.client._sd_bytes = names

    def has_index(self, connection: Any, table_name: str, index_name: str, schema: str | None = None, **kw: Any) -> bool:
        return False  # ``ADD INDEX IF NOT EXISTS``

    def _before(self, cursor: Any, context: Any, parameters: Any) -> None:
        compiled = getattr(context, 'compiled', None)
        if compiled is None or not (context.isinsert or context.isupdate or context.isdelete):
            return
        stmt = compiled.statement
        table = stmt.table
        if context.isinsert:
            if getattr(stmt, '_superduper_upsert', False):
                return
            key = list(table.primary_key.columns)
            rows = parameters if isinstance(parameters, list) else [parameters]
            if not key or not rows or not isinstance(rows[0], dict):
                return
            names = [compiled.escaped_bind_names.get(c.key, c.key) for c in key]
            values = [tuple(r.get(n) for n in names) for r in rows]
            if len(set(values)) < len(values):
                raise ch_dbapi.IntegrityError(f'duplicate key in the rows inserted into {table.name!r}')
            found = _existing(self, cursor, table, key, values)
            if found:
                raise ch_dbapi.IntegrityError(f'duplicate key {found[0]!r} in table {table.name!r}')
            return
        # an update's or delete's row count, counted before the mutation runs
        count = sa.select(sa.func.count()).select_from(table)
        if stmt.whereclause is not None:
            count = count.where(stmt.whereclause)
        compiled_count = count.compile(dialect=self, compile_kwargs={'render_postcompile': True})
        params = compiled_count.construct_params()
        params = {compiled_count.escaped_bind_names.get(k, k): v for k, v in params.items()}
        processors = compiled_count._bind_processors
        params = {k: processors[k](v) if k in processors else v for k, v in params.items()}
        counter = cursor.connection.cursor() if hasattr(cursor, 'connection') else cursor
        ClickHouseDialect.do_execute(self, counter, str(compiled_count), params, None)
        context._rowcount = int(counter.fetchone()[0])

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        self._before(cursor, context, parameters)
        self._bytes_read(cursor, context)
        super().do_execute(cursor, statement, parameters, context)

    def do_executemany(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        self._before(cursor, context, parameters)
        super().do_executemany(cursor, statement, parameters, context)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        self._before(cursor, context, {})
        self._bytes_read(cursor, context)
        super().do_execute_no_params(cursor, statement, context)


def _existing(dialect: Any, cursor: Any, table: sa.Table, key: list, values: list[tuple]) -> list:
    """Which of these keys ``table`` holds."""
    found: list = []
    columns = [table.c[c.name] for c in key]
    for part in chunks(values):
        if len(columns) == 1:
            cond = columns[0].in_([v[0] for v in part])
        else:
            cond = sa.tuple_(*columns).in_(part)
        stmt = sa.select(*columns).where(cond).limit(1)
        compiled = stmt.compile(dialect=dialect, compile_kwargs={'render_postcompile': True})
        params = {compiled.escaped_bind_names.get(k, k): v for k, v in compiled.construct_params().items()}
        processors = compiled._bind_processors
        params = {k: processors[k](v) if k in processors else v for k, v in params.items()}
        counter = cursor.connection.cursor() if hasattr(cursor, 'connection') else cursor
        ClickHouseDialect.do_execute(dialect, counter, str(compiled), params, None)
        found += [tuple(r) for r in counter.fetchall()]
        if found:
            break
    return found


def _naive_within(values: list) -> bool:
    """Whether every value is ``None`` or a naive datetime ``DateTime64`` holds (two comparisons in C)."""
    present = [v for v in values if v is not None]
    if not present or set(map(type, present)) != {datetime.datetime} or any(v.tzinfo for v in present):
        return not present
    return FIRST_DATE <= min(present) and max(present) <= LAST_DATE


def _bind(column_type: Any, dialect: Any, values: list) -> list:
    if (type(column_type) is JSONText and json.encoder.c_make_encoder is not None
            and column_type.impl_instance._cached_bind_processor(dialect) is None):
        texts = _json_texts(values)
        if texts is not None:
            return texts
    process = column_type._cached_bind_processor(dialect)
    return list(map(process, values)) if process else values


def _json_texts(values: list) -> list | None:
    """``JSONText``'s text of each value (``json.dumps``'s, ``None`` kept), by one C encoder made for the whole
    column: ``json.dumps`` makes one per value, which is most of its time on small values. ``None`` where a
    value does not encode (the values then go through the type's own processor, which raises as before)."""
    defaults = json.JSONEncoder()  # the settings ``json.dumps`` uses when given none
    try:
        encode = json.encoder.c_make_encoder(
            {}, defaults.default, json.encoder.encode_basestring_ascii, defaults.indent, defaults.key_separator,
            defaults.item_separator, defaults.sort_keys, defaults.skipkeys, defaults.allow_nan)
        return [None if v is None else ''.join(encode(v, 0)) for v in values]
    except (TypeError, ValueError, RecursionError):
        return None


#: the Arrow kind (``superduper.backends.sql.arrow_rows``) of each ClickHouse type inserted through Arrow
ARROW_KINDS = {'String': 'string', 'Int64': 'int64', 'Float64': 'float64', 'Bool': 'bool_',
               'DateTime64(6)': 'timestamp'}


def _arrow_kind(column_type: Any, dialect: Any, client: Any) -> str | None:
    if isinstance(column_type, (UUIDValue, ChVector)) or _is_bytes(column_type):
        return None
    try:
        kind = ARROW_KINDS.get(_type_name(column_type, dialect))
    except sa.exc.CompileError:
        return None
    # Arrow's naive timestamps are UTC; the driver reads naive datetimes in the server's zone
    if kind == 'timestamp' and str(client.server_tz) not in ('UTC', 'Etc/UTC'):
        return None
    return kind


#: the most characters of key literals in one query looking for existing keys (ClickHouse parses at most
#: ``max_query_size``, 256 KiB by default)
KEY_QUERY_CHARS = 200_000


def _string_literal(text: str) -> str:
    return "'" + text.replace('\\', '\\\\').replace("'", "\\'") + "'"


def _key_values(table: sa.Table, keys: Sequence[str], columns: list[list]) -> list | None:
    """The single-column primary key's values, where they are all text or all integers; ``None`` otherwise (the
    insert then goes through SQLAlchemy, whose dialect checks the keys with bound parameters)."""
    key = [c.name for c in table.primary_key.columns]
    if len(key) != 1 or key[0] not in keys:
        return None
    values = columns[list(keys).index(key[0])]
    return values if set(map(type, values)) in ({str}, {int}) else None


@dataclasses.dataclass
class _Batch:
    """A batch of an insert, ready to write: its columns, the values of its single-column key where they are all
    text or all integers, and its Arrow table where ClickHouse takes it as Arrow input."""

    keys: Sequence[str]
    columns: list[list]
    key_values: list | None
    arrow: Any


def _refuse_repeated(name: str, values: list) -> None:
    """Fail as a duplicate key does elsewhere on a key given twice in one insert."""
    if len(set(values)) < len(values):
        raise ch_dbapi.IntegrityError(f'duplicate key in the rows inserted into {name!r}')


def _existing_by_literals(client: Any, name: str, table: sa.Table, values: list) -> tuple | None:
    """One of ``values`` (keys of ``table``) that the table holds, looked for with the keys written into the
    queries as literals, as few queries as ``KEY_QUERY_CHARS`` allows."""
    literals = [_string_literal(v) for v in values] if isinstance(values[0], str) else list(map(str, values))
    column = quote_identifier(table.primary_key.columns[0].name)
    start = 0
    while start < len(literals):
        end, size = start, 0
        while end < len(literals) and (size < KEY_QUERY_CHARS or end == start):
            size += len(literals[end]) + 1
            end += 1
        found = client.query(f'SELECT {column} FROM {quote_identifier(name)} '
                             f'WHERE {column} IN ({",".join(literals[start:end])}) LIMIT 1').result_rows
        if found:
            return tuple(found[0])
        start = end
    return None


def _connect(*args: Any, **kwargs: Any) -> Any:
    """A DB-API connection whose next query can be told which columns to read as bytes (``_sd_bytes``)."""
    connection = ch_dbapi.connect(*args, **kwargs)
    client = connection.client
    query = client.query
    client._sd_bytes = None

    def query_with_formats(*args: Any, **kw: Any) -> Any:
        columns, client._sd_bytes = client._sd_bytes, None
        if columns and kw.get('context') is None:
            kw['column_formats'] = dict.fromkeys(columns, 'bytes')
        return query(*args, **kw)

    client.query = query_with_formats
    return connection


registry.register('clickhousedb.superduper', __name__, 'SuperduperClickHouseDialect')


# ---- the data backends ----------------------------------------------------------------------------------------
class ClickHouseDataBackend(SQLDataBackend):
    """A ClickHouse server: ``clickhouse://[user[:password]@]host[:port]/database`` (HTTP, port 8123 by default;
    ``clickhouses://`` for HTTPS)."""

    scheme = 'clickhouse'
    tested = "not run against a server (Debian's 18.16 is too old for the driver)"
    # no transactions or row locks: the metadata's compare-and-set writes (index states, output numbers, artifact
    # refs) are safe for one process at a time, so workers are refused until they are made safe here
    capabilities = Capabilities(change_capture='polling', transactions=False, upsert=True, native_vectors=True,
                                identifier_limit=None,
                                shared=False, unshared_reason='superduper writes ClickHouse from one process at a '
                                'time (no transactions or row locks to coordinate several)')
    epoch_sql = 'toUnixTimestamp64Micro(now64(6)) / 1e6'
    needs_database_name = True

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        query = '&'.join(f'ch_{k}={v}' for k, v in SETTINGS.items())
        url = f'clickhousedb+superduper://{rest}'
        if scheme.lower() == 'clickhouses':
            query += '&secure=true'
        return url + ('&' if '?' in url else '?') + query

    def __init__(self, uri: str):
        super().__init__(uri)
        with self.engine.connect() as conn:
            self.dialect.load_bytes_columns(conn)

    def create_table(self, name: str, types: dict[str, Any], primary_key: str) -> None:
        if self.has_table(name):  # columns added later are Nullable (and marked if they hold bytes), as at creation
            existing = {c.name for c in self._reflect(name).columns}
            built = self._build(name, {f: t for f, t in types.items() if f not in existing or f == primary_key},
                                primary_key)
            compiler = self.dialect.ddl_compiler(self.dialect, None)
            with self.begin() as conn:
                for column in built.columns:
                    if column.name not in existing:
                        self.check_name(column.name, what=f'column of table {name!r}:')
                        self.run_sql(conn, f'ALTER TABLE {self.sql_name(name)} ADD COLUMN '
                                           f'{compiler.get_column_specification(column)}')
        super().create_table(name, types, primary_key)

    def rows_by_key(self, name: str, columns: Sequence[str], key: str, values: Sequence[Any]) -> list:
        # through SQLAlchemy, which tells the driver which columns hold bytes
        if not values:
            return []
        return [row for batch in self.select(name, columns, Compare(key, 'in', list(values))) for row in batch]

    def column_type(self, storage: str) -> Any:
        if storage == 'json':
            return JSONText()
        if storage == 'uuid':
            return UUIDValue()
        if storage == 'datetime':
            return DateTime64(6)
        return super().column_type(storage)

    def field_type(self, ftype: FieldType) -> Any:
        if isinstance(ftype, Vector) and ftype.dtype == 'float32':
            return ChVector(ftype.dim)
        return super().field_type(ftype)

    def native_vectors(self, table: str, field: str) -> bool:
        return isinstance(self.table(table).c[field].type, ChVector)

    def native_searcher(self, db: Any, index: Any) -> Any:
        """ClickHouse's own exact search over the index's outputs (where ``native_vectors``)."""
        return ClickHouseVectorSearcher(db, index)

    def where(self) -> str:
        url = self.engine.url
        return f'ClickHouse database {url.database!r} at {url.host}:{url.port or 8123}'

    def table_names(self) -> list[str]:
        with self.engine.connect() as conn:
            names = conn.exec_driver_sql(
                'SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name').scalars()
            return list(names)

    def has_table(self, name: str) -> bool:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(
                'SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = %(n)s',
                {'n': name}).scalar() > 0

    def _reflect(self, name: str) -> sa.Table:
        table = super()._reflect(name)
        with self.engine.connect() as conn:
            key = conn.exec_driver_sql(
                'SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = %(n)s',
                {'n': name}).scalar() or ''
        keys = [k.strip().strip('()` ') for k in key.split(',') if k.strip('() ')]
        for column in table.columns:
            column.primary_key = column.name in keys
        return sa.Table(name, sa.MetaData(), *[c._copy() for c in table.columns])

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str) -> Any:
        stmt = table.insert()
        stmt._superduper_upsert = True  # the dialect lets it replace existing rows
        return stmt

    def _check_dates(self, name: str, keys: Sequence[str], columns: list[list]) -> None:
        """Refuse datetimes ``DateTime64`` cannot hold (it would store another date, silently)."""
        table = self.table(name)
        for key, values in zip(keys, columns):
            if isinstance(table.c[key].type, sa.DateTime):
                if _naive_within(values):
                    continue
                for i, v in enumerate(values):
                    if isinstance(v, datetime.datetime) and not FIRST_DATE <= v.replace(tzinfo=None) <= LAST_DATE:
                        raise InvalidValue(f'table {name!r}, field {key!r}, row {i}: {v!r} is outside the dates '
                                           f'ClickHouse stores ({FIRST_DATE.year} to {LAST_DATE.year})')

    def update(self, conn: Any, name: str, values: dict[str, Any], where: Any) -> int:
        self._check_dates(name, list(values), [[v] for v in values.values()])
        return super().update(conn, name, values, where)

    def insert(self, conn: Any, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> None:
        if upsert_key is None:
            return self.insert_batches(conn, name, keys, [columns])
        for batch in self._prepared(conn, name, keys, [columns]):
            self._write(conn, name, batch, upsert_key)

    def insert_batches(self, conn: Any, name: str, keys: Sequence[str], batches: list[list[list]]) -> None:
        """A plain insert refuses keys given twice or held already, and, with no transaction to take back the
        batches written before a failing one, checks every batch before it writes the first."""
        prepared = self._prepared(conn, name, keys, batches)
        self._refuse_duplicates(conn, name, prepared)
        for batch in prepared:
            self._write(conn, name, batch)

    def _prepared(self, conn: Any, name: str, keys: Sequence[str], batches: list[list[list]]) -> list['_Batch']:
        table = self.table(name)
        client = conn.connection.dbapi_connection.client
        prepared = []
        for columns in batches:
            if not columns or not columns[0]:
                continue
            self._check_dates(name, keys, columns)
            processed = [_bind(table.c[k].type, self.dialect, values) for k, values in zip(keys, columns)]
            key_values = _key_values(table, keys, processed)
            kinds = [_arrow_kind(table.c[k].type, self.dialect, client) for k in keys]
            arrow = arrow_table(keys, processed, kinds) if key_values is not None else None
            prepared.append(_Batch(keys, columns, key_values, arrow))
        return prepared

    def _refuse_duplicates(self, conn: Any, name: str, prepared: list['_Batch']) -> None:
        """Keys repeated anywhere in the insert, or held already (a batch whose keys are not all text or all
        integers is checked by the dialect as it is written)."""
        table = self.table(name)
        client = conn.connection.dbapi_connection.client
        with self.errors('insert into', name):
            _refuse_repeated(name, [v for batch in prepared if batch.key_values for v in batch.key_values])
            for batch in prepared:
                if batch.key_values is None:
                    continue
                found = (self.existing_key(client, name, table, batch.key_values, batch.arrow)
                         if batch.arrow is not None else _existing_by_literals(client, name, table, batch.key_values))
                if found is not None:
                    raise ch_dbapi.IntegrityError(f'duplicate key {found!r} in table {name!r}')

    def _write(self, conn: Any, name: str, batch: '_Batch', upsert_key: str | None = None) -> None:
        table = self.table(name)
        with self.errors('insert into', name):
            if batch.arrow is not None:  # the batch goes whole, as ClickHouse's Arrow input
                conn.connection.dbapi_connection.client.insert_arrow(quote_identifier(name), batch.arrow)
                return
            rows = [dict(zip(batch.keys, values)) for values in zip(*batch.columns)]
            stmt = table.insert() if upsert_key is None else self.upsert_statement(table, batch.keys, upsert_key)
            conn.execute(stmt, rows)

    def existing_key(self, client: Any, name: str, table: sa.Table, values: list, arrow: Any) -> tuple | None:
        """One of ``values`` (the single-column primary key of the rows in ``arrow``, all text or all integers)
        that ``table`` holds already, as a tuple; ``None`` if it holds none of them."""
        return _existing_by_literals(client, name, table, values)

    def row_hash(self, table: sa.Table) -> Any:
        return sa.func.toString(sa.func.cityHash64(sa.func.tuple(*table.columns)))

    def insert_returning(self, conn: Any, name: str, rows: list[dict]) -> list[tuple]:
        raise DatabaseError(f'ClickHouse does not generate keys: rows inserted into {name!r} need their key')

    def is_deadlock(self, error: Any) -> bool:
        return False


class ChdbDataBackend(ClickHouseDataBackend):
    """ClickHouse embedded in this process by chDB: ``chdb://path/to/folder`` or ``chdb://:memory:``."""

    scheme = 'chdb'
    tested = 'the shared suite (ClickHouse 26.9 in process), in CI'
    # names: a table is a folder named after it; measured with chDB 4.4 (database 'default'): 206 bytes
    capabilities = Capabilities(change_capture='polling', transactions=False, upsert=True, native_vectors=True,
                                identifier_limit=206,
                                shared=False,
                                unshared_reason='chDB runs ClickHouse inside one process, which holds its folder')
    needs_database_name = False

    def __init__(self, uri: str):
        path = file_path(uri)
        if path is not None:
            if os.path.exists(path) and not os.path.isdir(path):
                raise ConfigError(f'{uri!r}: {os.path.abspath(path)} is a file; chDB keeps a database in a folder')
            os.makedirs(path, exist_ok=True)
        self._path = None if path is None else os.path.abspath(path)
        try:
            super().__init__(uri)
        except ConfigError as e:
            if 'already initialized' not in str(e):
                raise
            # chDB opens one folder per process: a datalayer dropped without ``close()`` may still hold another
            gc.collect()
            try:
                super().__init__(uri)
            except ConfigError:
                raise ConfigError(f'cannot open {uri!r}: chDB opens one database folder per process, and another '
                                  'is open in this one (close its datalayer first)') from None
        if path is None:
            self.capabilities = dataclasses.replace(self.capabilities, persistent=False, change_capture='none',
                                                    unshared_reason=f'the in-memory database {uri!r} lives in one process')

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        return 'clickhousedb+superduper://'

    def engine_options(self) -> dict[str, Any]:
        dsn = 'chdb://memory' if self._path is None else 'chdb://' + self._path
        settings = {f'ch_{k}': v for k, v in SETTINGS.items()}
        # one connection for the process: chDB's engine is one per process and path
        return {'poolclass': SerialPool, 'creator': lambda: _connect(dsn=dsn, **settings)}

    def existing_key(self, client: Any, name: str, table: sa.Table, values: list, arrow: Any) -> tuple | None:
        """The keys go to the engine in this process as an Arrow file, which ClickHouse's ``file`` table function
        scans: one short query (measured: ~7 ms for 10,000 text keys against 100,000 rows, where the same keys
        as literals took ~90 ms, mostly ClickHouse parsing them)."""
        import pyarrow as pa  # there is an Arrow table: pyarrow is installed

        column = table.primary_key.columns[0].name
        keys = arrow.select([column])
        fd, path = tempfile.mkstemp(prefix='superduper-keys-', suffix='.arrow')
        try:
            with os.fdopen(fd, 'wb') as f, pa.ipc.new_file(f, keys.schema) as writer:
                writer.write_table(keys)
            quoted = quote_identifier(column)
            found = client.query(f'SELECT {quoted} FROM {quote_identifier(name)} WHERE {quoted} IN '
                                 f'(SELECT {quoted} FROM file({_string_literal(os.path.abspath(path))}, Arrow)) '
                                 'LIMIT 1').result_rows
        finally:
            os.unlink(path)
        return tuple(found[0]) if found else None

    def where(self) -> str:
        return f'chDB database {self._path or "(in memory)"!r}'

    @classmethod
    def missing(cls, uri: str) -> str | None:
        return missing_file(uri, 'chDB')

    @classmethod
    def shareable_uri(cls, uri: str, base_dir: str) -> str:
        raise ConfigError(f'chDB opens {uri!r} inside one process')

