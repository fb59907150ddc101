"""The SQL data backend on SQLAlchemy Core, shared by every SQL database.

Statements are built and compiled by SQLAlchemy (quoting, dialect, bound parameters); bulk inserts then go to
the driver's ``executemany`` with positional tuples, skipping Core's per-row parameter processing, which costs
more than the database itself on SQLite. Dialect modules (``sqlite``, ``postgres``, ``mysql``, ``duckdb``)
override URL translation, engine options and column types.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import zlib
from typing import Any, ClassVar, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from superduper.base.exceptions import ComponentError, ConfigError, DatabaseError, UnknownTable
from superduper.base.query import And, Compare, Condition, Not, Or
from superduper.components.datatype import FieldType

ID_LENGTH = 255
CHANGES = '_superduper_changes'
# trigger name suffix, event, the row it sees, and the change it records
ROW_EVENTS = (('ins', 'INSERT', 'NEW', 'upsert'), ('upd', 'UPDATE', 'NEW', 'upsert'), ('del', 'DELETE', 'OLD', 'delete'))


class SQLDataBackend:
    """Any database SQLAlchemy has a dialect for; ``uri`` is a SQLAlchemy URL."""

    scheme: ClassVar[str] = 'sqlalchemy'
    #: whether database triggers record changes made by any client (see ``install_capture``)
    captures_changes: ClassVar[bool] = False
    #: whether workers can claim changes with ``FOR UPDATE SKIP LOCKED``
    skip_locked: ClassVar[bool] = False
    #: whether results can be streamed through a server-side cursor while other statements run
    streams_results: ClassVar[bool] = True
    #: every column is declared (see ``superduper.backends.base.DataBackend``)
    schemaless: ClassVar[bool] = False

    def __init__(self, uri: str):
        self.uri = uri
        try:
            self.engine = sa.create_engine(self.sqlalchemy_url(uri), **self.engine_options())
        except sa.exc.ArgumentError as e:
            raise ConfigError(f'cannot use database URI {_redact(uri)!r}: {e}') from e
        self.dialect = self.engine.dialect
        self._meta = sa.MetaData()
        self._tables: dict[str, sa.Table] = {}
        self._insert_sql: dict[tuple, tuple[str, Any]] = {}
        self._local = threading.local()

    def __repr__(self) -> str:
        return f'{type(self).__name__}({_redact(self.uri)!r})'

    # ---- wiring (``superduper.backends.base.DataBackend``) ------------------------------------------------
    def metadata_store(self) -> Any:
        from superduper.backends.sql.metadata import SQLMetadataStore

        return SQLMetadataStore(self.engine)

    def default_artifact_store(self, cache_dir: str) -> None:
        return None  # no general way to keep large files in SQL: the local filesystem

    def change_feed(self, db: Any) -> Any:
        from superduper.base.changes import ChangeFeed

        return ChangeFeed(db)

    def native_vectors(self, table: str, field: str) -> bool:
        return False

    def primary_key_of(self, table: Any) -> str:
        return table.primary_id

    def new_ids(self, n: int) -> list[str]:
        hexes = os.urandom(16 * n).hex()
        return [hexes[32 * i : 32 * i + 32] for i in range(n)]

    # ---- hooks for dialect modules -------------------------------------------------------------------------
    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        return uri

    def engine_options(self) -> dict[str, Any]:
        return {}

    def column_type(self, storage: str) -> Any:
        return {
            'str': sa.Text(),
            'int': sa.BigInteger(),
            'float': sa.Double(),
            'bool': sa.Boolean(),
            'bytes': sa.LargeBinary(),
            'json': sa.JSON(none_as_null=True),
            'datetime': sa.DateTime(),
            'any': sa.Text(),
        }[storage]

    def field_type(self, ftype: FieldType) -> Any:
        """The column type for a field; a dialect may store some types natively (pgvector)."""
        return self.column_type(ftype.storage)

    def id_type(self) -> Any:
        return sa.String(ID_LENGTH)

    # ---- change capture -------------------------------------------------------------------------------------------
    @functools.cached_property
    def changes(self) -> sa.Table:
        """``_superduper_changes``: one row per inserted, updated or deleted row of a followed table."""
        table = sa.Table(
            CHANGES,
            sa.MetaData(),
            sa.Column('id', sa.BigInteger().with_variant(sa.Integer, 'sqlite'), primary_key=True, autoincrement=True),
            sa.Column('tbl', sa.String(255), nullable=False),
            sa.Column('source', sa.String(255), nullable=False),
            sa.Column('op', sa.String(8), nullable=False),
            sa.Column('listener', sa.String(64)),  # for one listener only (a backfill); NULL: every follower
            sa.Column('created_at', sa.DateTime, nullable=False),
            sa.Index('ix_superduper_changes_listener', 'listener', 'source'),
        )
        table.create(self.engine, checkfirst=True)
        return table

    def install_capture(self, table: str, primary_key: str) -> None:
        """Triggers recording every write to ``table`` in ``_superduper_changes``, whoever makes it (row triggers;
        a dialect gives their SQL through ``row_trigger_sql``)."""
        self.changes  # noqa: B018 (created on first use)
        with self.begin() as conn:
            for event, when, row, op in ROW_EVENTS:
                trigger = self._quote(self.trigger_name(table, event))
                record = (f'INSERT INTO {CHANGES} (tbl, source, op, created_at) VALUES ({self._literal(table)}, '
                          f"{row}.{self._quote(primary_key)}, '{op}', {self.utc_now_sql})")
                for sql in self.row_trigger_sql(trigger, when, self._quote(table), record):
                    conn.exec_driver_sql(sql)

    #: the SQL of the current UTC time, for change rows written by triggers
    utc_now_sql: ClassVar[str] = 'CURRENT_TIMESTAMP'

    def row_trigger_sql(self, trigger: str, when: str, table: str, record: str) -> list[str]:
        raise NotImplementedError(f'{type(self).__name__} cannot record changes with triggers')

    def remove_capture(self, table: str) -> None:
        with self.begin() as conn:
            for event, *_ in ROW_EVENTS:
                conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {self._quote(self.trigger_name(table, event))}')

    @staticmethod
    def trigger_name(table: str, event: str) -> str:
        return f'_sdc_{zlib.crc32(table.encode()):08x}_{event}'

    def _literal(self, value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    # ---- connections ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: everything done with the connection commits together or not at all."""
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        connection = self._local.__dict__.pop('connection', None)
        if connection is not None:
            connection.close()
        self.engine.dispose()

    # ---- tables ---------------------------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        return sa.inspect(self.engine).get_table_names()

    def has_table(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)

    def table(self, name: str) -> sa.Table:
        table = self._tables.get(name)
        if table is None:
            if not self.has_table(name):
                raise UnknownTable(_unknown_table_message(name, self.table_names(), self.uri))
            table = self._tables[name] = self._reflect(name)
        return table

    def _reflect(self, name: str) -> sa.Table:
        return sa.Table(name, sa.MetaData(), autoload_with=self.engine)

    def forget(self, name: str) -> None:
        self._tables.pop(name, None)
        self._by_key_sql.cache_clear()
        self._insert_sql = {k: v for k, v in self._insert_sql.items() if k[0] != name}

    def describe(self, name: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """The storage kind of each column and the primary key of an existing table (reflection)."""
        table = self.table(name)
        kinds = {c.name: storage_of(c.type) for c in table.columns}
        return kinds, tuple(c.name for c in table.primary_key.columns)

    def _build(self, name: str, types: dict[str, FieldType], primary_key: str) -> sa.Table:
        columns = [
            sa.Column(field, self.id_type() if field == primary_key else self.field_type(ftype),
                      primary_key=field == primary_key, nullable=field != primary_key)
            for field, ftype in types.items()
        ]
        return sa.Table(name, sa.MetaData(), *columns)

    def bind_table(self, name: str, types: dict[str, FieldType], primary_key: str) -> None:
        """Use the declared types (not reflection) for a table superduper created."""
        self.forget(name)
        self._tables[name] = self._build(name, types, primary_key)

    def create_table(self, name: str, types: dict[str, FieldType], primary_key: str) -> None:
        """Create the table, or add the declared columns an existing one lacks."""
        if not self.has_table(name):
            with self._errors('create', name):
                self._build(name, types, primary_key).create(self.engine)
        else:
            existing = {c.name for c in self._reflect(name).columns}
            if primary_key not in existing:
                raise ComponentError(f'table {name!r} already exists without the primary key column {primary_key!r}')
            missing = [f for f in types if f not in existing]
            with self.begin() as conn:
                for field in missing:
                    ddl = self.field_type(types[field]).compile(dialect=self.dialect)
                    conn.exec_driver_sql(f'ALTER TABLE {self._quote(name)} ADD COLUMN {self._quote(field)} {ddl}')
        self.bind_table(name, types, primary_key)

    def drop_table(self, name: str) -> None:
        with self.begin() as conn:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS {self._quote(name)}')
        self.forget(name)

    def _quote(self, identifier: str) -> str:
        return self.dialect.identifier_preparer.quote(identifier)

    # ---- writes ---------------------------------------------------------------------------------------------
    def insert(
        self, conn: Connection, name: str, keys: Sequence[str], columns: list[list], upsert_key: str | None = None
    ) -> None:
        """Insert rows given column by column (all of equal length) with one ``executemany``; with ``upsert_key``,
        a row whose key exists already replaces the stored one."""
        sql, arrange = self._compiled_insert(name, tuple(keys), upsert_key)
        params = arrange(columns)
        with self._errors('insert into', name):
            if sql is None:  # a dialect with no upsert: delete, then insert, in the caller's transaction
                table = self.table(name)
                key_values = columns[list(keys).index(upsert_key)]
                for i in range(0, len(key_values), 1000):
                    conn.execute(table.delete().where(table.c[upsert_key].in_(key_values[i : i + 1000])))
                sql, arrange = self._compiled_insert(name, tuple(keys), None)
            conn.exec_driver_sql(sql, params)

    def insert_returning(self, conn: Connection, name: str, rows: list[dict]) -> list[tuple]:
        """Insert letting the database generate the primary key (tables with autoincrement keys)."""
        table = self.table(name)
        stmt = table.insert().returning(*table.primary_key.columns, sort_by_parameter_order=True)
        with self._errors('insert into', name):
            return [tuple(r) for r in conn.execute(stmt, rows)]

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str) -> Any | None:
        """``INSERT ... ON CONFLICT`` for this dialect, or ``None`` where there is none."""
        dialect = self.dialect.name
        if dialect == 'sqlite':
            from sqlalchemy.dialects.sqlite import insert
        elif dialect in ('postgresql', 'duckdb'):
            from sqlalchemy.dialects.postgresql import insert
        elif dialect in ('mysql', 'mariadb'):
            from sqlalchemy.dialects.mysql import insert

            stmt = insert(table)
            return stmt.on_duplicate_key_update({k: stmt.inserted[k] for k in keys if k != key} or {key: stmt.inserted[key]})
        else:
            return None
        stmt = insert(table)
        updates = {k: stmt.excluded[k] for k in keys if k != key}
        if not updates:
            return stmt.on_conflict_do_nothing(index_elements=[key])
        return stmt.on_conflict_do_update(index_elements=[key], set_=updates)

    def _compiled_insert(self, name: str, keys: tuple[str, ...], upsert_key: str | None) -> tuple[str | None, Any]:
        cached = self._insert_sql.get((name, keys, upsert_key))
        if cached:
            return cached
        table = self.table(name)
        stmt = table.insert() if upsert_key is None else self.upsert_statement(table, keys, upsert_key)
        processors = [table.c[k].type._cached_bind_processor(self.dialect) for k in keys]
        compiled = (stmt if stmt is not None else table.insert()).compile(dialect=self.dialect, column_keys=list(keys))
        if compiled.positional:
            order = [keys.index(k) for k in compiled.positiontup]
            names = None
        else:
            order = list(range(len(keys)))
            names = [compiled.escaped_bind_names.get(k, k) for k in keys]

        def arrange(columns: list[list]) -> list:
            cols = [list(map(p, c)) if p else c for p, c in zip(processors, columns)]
            cols = [cols[i] for i in order]
            if names is None:
                return list(zip(*cols))
            return [dict(zip(names, row)) for row in zip(*cols)]

        entry = (str(compiled) if stmt is not None else None, arrange)
        self._insert_sql[(name, keys, upsert_key)] = entry
        return entry

    def update(self, conn: Connection, name: str, values: dict[str, Any], where: Condition | None) -> int:
        table = self.table(name)
        stmt = table.update().values(**values)
        if where is not None:
            stmt = stmt.where(self._where(table, where))
        with self._errors('update', name):
            return conn.execute(stmt).rowcount

    def delete(self, conn: Connection, name: str, where: Condition | None) -> int:
        table = self.table(name)
        stmt = table.delete()
        if where is not None:
            stmt = stmt.where(self._where(table, where))
        with self._errors('delete from', name):
            return conn.execute(stmt).rowcount

    # ---- reads ----------------------------------------------------------------------------------------------
    def select(
        self,
        name: str,
        columns: Sequence[str],
        where: Condition | None = None,
        order_by: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        batch_size: int = 2000,
        conn: Connection | None = None,
        joins: Sequence[tuple[str, str, str, str]] = (),
    ) -> Iterator[list]:
        """Batches of row tuples in ``columns`` order (then one column per join), streamed from the database.

        ``joins`` are ``(table, column, on, key)``: a left join adding ``table.column`` where ``name.on ==
        table.key`` (a listener's outputs next to their source rows)."""
        table = self.table(name)
        selected = [table.c[c] for c in columns]
        source: Any = table
        for other_name, column, on, key in joins:
            other = self.table(other_name)
            selected.append(other.c[column])
            source = source.outerjoin(other, table.c[on] == other.c[key])
        stmt = sa.select(*selected).select_from(source)
        if where is not None:
            stmt = stmt.where(self._where(table, where))
        for column, descending in order_by:
            stmt = stmt.order_by(table.c[column].desc() if descending else table.c[column])
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        if conn is not None:
            yield from self._fetch(conn, stmt, name, batch_size)
            return
        if not self.streams_results:  # read everything and let the connection go before the caller writes
            with self.engine.connect() as own:
                batches = list(self._fetch(own, stmt, name, batch_size))
            yield from batches
            return
        with self.engine.connect() as own:
            cursor = self.server_side_cursor(own.connection.dbapi_connection)
            driver_query = self._driver_query(stmt) if cursor is not None else None
            if cursor is not None and driver_query is None:
                cursor.close()
                cursor = None
            if cursor is not None:
                with self._errors('select from', name):
                    try:
                        cursor.execute(*driver_query)
                        yield from self._read_cursor(cursor, stmt, batch_size)
                    finally:
                        cursor.close()
            else:
                server_side = self.dialect.supports_server_side_cursors
                if server_side:
                    own = own.execution_options(stream_results=True, yield_per=batch_size)
                yield from self._fetch(own, stmt, name, batch_size, server_side)

    def server_side_cursor(self, dbapi_connection: Any) -> Any | None:
        """A driver cursor that streams rows from the server, for dialects that know how to make one."""
        return None

    def _driver_query(self, stmt: Any) -> tuple[str, Any] | None:
        """The statement as SQL and parameters for the driver, unless a parameter needs SQLAlchemy's conversion."""
        compiled = stmt.compile(dialect=self.dialect, compile_kwargs={'render_postcompile': True})
        if any(b.type._cached_bind_processor(self.dialect) for b in compiled.binds.values()):
            return None
        params = compiled.construct_params()
        if compiled.positional:
            return str(compiled), tuple(params[k] for k in compiled.positiontup)
        return str(compiled), {compiled.escaped_bind_names.get(k, k): v for k, v in params.items()}

    def _fetch(
        self, conn: Connection, stmt: Any, name: str, batch_size: int, server_side: bool = False
    ) -> Iterator[list]:
        with self._errors('select from', name):
            result = conn.execute(stmt)
            try:
                if server_side:  # SQLAlchemy buffers a server-side cursor: read through it
                    yield from result.partitions(batch_size)
                else:
                    yield from self._read_cursor(result.cursor, stmt, batch_size)
            finally:
                result.close()

    def _read_cursor(self, cursor: Any, stmt: Any, batch_size: int) -> Iterator[list]:
        """Read the driver's cursor directly, converting only the columns whose type needs it: SQLAlchemy's
        per-row ``Row`` objects would cost more than the database itself."""
        convert = [
            (i, proc)
            for i, (col, desc) in enumerate(zip(stmt.selected_columns, cursor.description))
            if (proc := col.type.dialect_impl(self.dialect).result_processor(self.dialect, desc[1]))
        ]
        if self.streams_results:
            batches = iter(lambda: list(cursor.fetchmany(batch_size)), [])
        else:  # the connection is shared: read everything before anyone else uses it
            rows = cursor.fetchall()
            batches = (rows[i : i + batch_size] for i in range(0, len(rows), batch_size))
        for batch in batches:
            yield _convert(batch, convert) if convert else batch

    def rows_by_key(self, name: str, columns: Sequence[str], key: str, values: Sequence[Any]) -> list:
        """The rows whose ``key`` is one of ``values`` (a few, such as vector search hits), through SQL compiled once
        per shape and run on the driver's cursor: the hot path of a vector search."""
        if not values:
            return []
        sql, names, convert = self._by_key_sql(name, tuple(columns), key, len(values))
        params: Any = tuple(values) if names is None else dict(zip(names, values))
        with self._read_connection() as dbapi_connection, self._errors('select from', name):
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
            finally:
                cursor.close()
        return _convert(rows, convert) if convert and rows else rows

    @contextlib.contextmanager
    def _read_connection(self) -> Iterator[Any]:
        """A driver connection kept per thread for short reads (pool checkout costs as much as the read); a
        shared single connection (DuckDB, in-memory SQLite) goes through the pool instead."""
        if isinstance(self.engine.pool, sa.pool.StaticPool):
            with self.engine.connect() as conn:
                yield conn.connection.dbapi_connection
            return
        local = self._local.__dict__
        if local.get('pid') != os.getpid():  # a forked child must not share its parent's socket
            local.clear()
        connection = local.get('connection')
        if connection is None:
            connection = local['connection'] = self.engine.raw_connection()
            local['pid'] = os.getpid()
        try:
            yield connection.dbapi_connection
            connection.dbapi_connection.rollback()  # hold no snapshot or lock between reads
        except Exception:
            local.pop('connection', None)
            connection.invalidate()
            raise

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one backend per database; entries are small)
    def _by_key_sql(self, name: str, columns: tuple[str, ...], key: str, count: int) -> tuple[str, Any, list]:
        table = self.table(name)
        selected = [table.c[c] for c in columns]
        stmt = sa.select(*selected).where(
            table.c[key].in_(sa.bindparam('keys', value=[None] * count, expanding=True))
        )
        compiled = stmt.compile(dialect=self.dialect, compile_kwargs={'render_postcompile': True})
        names = None if compiled.positional else [compiled.escaped_bind_names.get(f'keys_{i + 1}', f'keys_{i + 1}')
                                                 for i in range(count)]
        convert = [
            (i, proc) for i, col in enumerate(selected)
            if (proc := col.type.dialect_impl(self.dialect).result_processor(self.dialect, None))
        ]
        return str(compiled), names, convert

    def count(self, name: str, where: Condition | None = None) -> int:
        table = self.table(name)
        stmt = sa.select(sa.func.count()).select_from(table)
        if where is not None:
            stmt = stmt.where(self._where(table, where))
        with self.engine.connect() as conn, self._errors('count', name):
            return conn.execute(stmt).scalar_one()

    # ---- filters --------------------------------------------------------------------------------------------
    def _where(self, table: sa.Table, cond: Condition) -> Any:
        if isinstance(cond, Compare):
            col = table.c[cond.field]
            value = cond.value
            if cond.op == '==':
                return col.is_(None) if value is None else col == value
            if cond.op == '!=':
                return col.is_not(None) if value is None else col != value
            if cond.op == 'in':
                return col.in_(list(value))
            return {'<': col.__lt__, '<=': col.__le__, '>': col.__gt__, '>=': col.__ge__}[cond.op](value)
        if isinstance(cond, And):
            return sa.and_(*[self._where(table, c) for c in cond.parts])
        if isinstance(cond, Or):
            return sa.or_(*[self._where(table, c) for c in cond.parts])
        if isinstance(cond, Not):
            return sa.not_(self._where(table, cond.part))
        raise TypeError(f'not a condition: {cond!r}')

    @contextlib.contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            raise DatabaseError(f'{action} table {name!r} failed: {reason}') from e
        except self.dialect.loaded_dbapi.Error as e:  # from a driver cursor used directly
            reason = str(e).strip().splitlines()[0]
            raise DatabaseError(f'{action} table {name!r} failed: {reason}') from e


def _convert(batch: list, convert: list) -> list:
    columns = list(zip(*batch))
    for i, proc in convert:
        columns[i] = list(map(proc, columns[i]))
    return list(zip(*columns))


def storage_of(sa_type: Any) -> str:
    """The storage kind of a reflected column type; ``'any'`` passes values through unchecked."""
    if isinstance(sa_type, sa.Boolean):
        return 'bool'
    if isinstance(sa_type, sa.Integer):
        return 'int'
    if isinstance(sa_type, sa.Float):
        return 'float'
    if isinstance(sa_type, sa.JSON):
        return 'json'
    if isinstance(sa_type, (sa.String, sa.Enum)):
        return 'str'
    if isinstance(sa_type, sa.LargeBinary) or isinstance(sa_type, sa.types._Binary):
        return 'bytes'
    if isinstance(sa_type, sa.DateTime):
        return 'datetime'
    return 'any'


def _unknown_table_message(name: str, existing: list[str], uri: str) -> str:
    visible = [t for t in existing if not t.startswith('_superduper')]
    return f'table {name!r} does not exist in {_redact(uri)}; tables: {", ".join(visible) or "(none)"}'


def _redact(uri: str) -> str:
    """The URI without its password."""
    try:
        return sa.engine.make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri
