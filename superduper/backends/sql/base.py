"""The SQL data backend on SQLAlchemy Core, shared by every SQL database.

Statements are built and compiled by SQLAlchemy (quoting, dialect, bound parameters); bulk inserts then go to
the driver's ``executemany`` with positional tuples, skipping Core's per-row parameter processing, which costs
more than the database itself on SQLite. Dialect modules (``sqlite``, ``postgres``, ``mysql``, ``duckdb``,
``mssql``, ``oracle``, ``trino``, ``druid``, ``impala`` ...) override URL translation, engine options, column types
and the statements written by hand. ``SQLDataBackend.offline`` builds a backend that compiles its statements without
a server (``superduper.backends.sql.statements`` lists them all).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import threading
import zlib
from typing import Any, ClassVar, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from superduper.backends.base import Capabilities
from superduper.backends.feed import chunks
from superduper.backends.sql.column_types import convert_columns, key_parser, storage_of
from superduper.backends.sql.filters import where_clause
from superduper.base.exceptions import ComponentError, ConfigError, DatabaseError, InvalidValue, UnknownTable
from superduper.base.query import Condition
from superduper.components.datatype import FieldType

ID_LENGTH = 255
EVENTS = ('ins', 'upd', 'del')
#: driver connections kept between short reads (the rest of the pool stays free for other work and threads)
IDLE_READERS = 4


class SQLDataBackend:
    """Any database SQLAlchemy has a dialect for; ``uri`` is a SQLAlchemy URL."""

    scheme: ClassVar[str] = 'sqlalchemy'
    capabilities: ClassVar[Capabilities] = Capabilities(change_capture='none', upsert=False)
    #: what the project's test suite runs this backend against (shown in the README's capability table)
    tested: ClassVar[str] = 'not tested'
    #: whether results can be streamed through a server-side cursor while other statements run
    streams_results: ClassVar[bool] = True
    #: every column is declared (see ``superduper.backends.base.DataBackend``)
    schemaless: ClassVar[bool] = False
    #: the database's clock in epoch seconds, as SQL (change rows and leases are timed by the database)
    epoch_sql: ClassVar[str] = 'CAST(CURRENT_TIMESTAMP AS FLOAT)'

    #: the database must be named in the URI (a server); without one a driver connects to its own default
    needs_database_name: ClassVar[bool] = False
    #: float columns keep NaN and infinity (SQLite turns NaN into NULL; MySQL has neither)
    stores_nan: ClassVar[bool] = True

    def __init__(self, uri: str):
        self.uri = uri
        url = self.sqlalchemy_url(uri)
        if self.needs_database_name and not sa.engine.make_url(url).database:
            raise ConfigError(f'{_redact(uri)!r} names no database; add it to the URI, e.g. '
                              f'{uri.split("://", 1)[0]}://user@host:port/<database>')
        try:
            self.engine = sa.create_engine(url, **self.engine_options())
        except sa.exc.NoSuchModuleError as e:  # the dialect's package is not installed: the registry names the extra
            raise ImportError(str(e)) from e
        except sa.exc.ArgumentError as e:
            raise ConfigError(f'cannot use database URI {_redact(uri)!r}: {e}') from e
        self.dialect = self.engine.dialect
        self.configure_engine()
        self._check_reachable()
        self._init_state()

    def _init_state(self) -> None:
        self._meta = sa.MetaData()
        self._tables: dict[str, sa.Table] = {}
        self._insert_sql: dict[tuple, tuple[str, Any]] = {}
        self._idle_readers: list[Any] = []  # driver connections kept for short reads (``_read_connection``)
        self._count_by_key_cache: dict[tuple, tuple | None] = {}
        self._readers_pid = os.getpid()
        self._readers_lock = threading.Lock()

    #: the server version ``offline`` compiles for (a dialect adapts its SQL to the version it connects to)
    offline_server_version: ClassVar[tuple[int, ...] | None] = None

    @classmethod
    def offline(cls, uri: str) -> 'SQLDataBackend':
        """This backend without a server: statements are built and compiled for the dialect ``uri`` names, as for a
        server of ``offline_server_version``, and kept, not sent (``self.engine.sent``; see
        ``superduper.backends.sql.offline``). The metadata store, output log and change feed made from it send
        their statements there too."""
        from superduper.backends.sql.offline import RecordingEngine

        self = cls.__new__(cls)
        self.uri = uri
        self.engine = RecordingEngine(cls.sqlalchemy_url(uri))
        self.dialect = self.engine.dialect
        if cls.offline_server_version is not None:
            self.dialect.server_version_info = cls.offline_server_version
        self.assume_server(self.dialect)
        self._init_state()
        return self

    def assume_server(self, dialect: Any) -> None:
        """Set what the dialect learns from a server when it first connects (``offline`` has none)."""

    def __repr__(self) -> str:
        return f'{type(self).__name__}({_redact(self.uri)!r})'

    def configure_engine(self) -> None:
        """Register the dialect's connection events (before the first connection is made)."""

    def _check_reachable(self) -> None:
        """Connect once, so that an unreachable server or a wrong password is one clear error now."""
        try:
            with self.engine.connect():
                pass
        except sa.exc.DBAPIError as e:
            reason = str(e.orig if e.orig is not None else e).strip().splitlines()[0]
            raise ConfigError(f'cannot connect to {self.where()}: {reason}') from None

    def where(self) -> str:
        """The database in words, without its password: the dialect, database, host and port."""
        url = self.engine.url
        if url.host is None:
            return f'{url.get_backend_name()} database {url.database or "(in memory)"!r}'
        port = f':{url.port}' if url.port else ''
        user = f'{url.username}@' if url.username else ''
        return f'{url.get_backend_name()} database {url.database!r} at {user}{url.host}{port}'

    @classmethod
    def missing(cls, uri: str) -> str | None:
        """Why ``uri`` names no existing database (it would be created by connecting), or ``None``."""
        return None

    # ---- wiring (``superduper.backends.base.DataBackend``) ------------------------------------------------
    def metadata_store(self) -> Any:
        from superduper.backends.sql.metadata import SQLMetadataStore

        return SQLMetadataStore(self.engine)

    def default_artifact_store(self, cache_dir: str) -> None:
        return None  # no general way to keep large files in SQL: the local filesystem

    def change_feed(self, cfg: Any, metadata: Any) -> Any:
        if self.capabilities.change_capture == 'triggers':
            from superduper.backends.sql.changes import SQLChangeFeed

            return SQLChangeFeed(self, lease=cfg.lease_seconds, retry_delay=cfg.retry_delay)
        if self.capabilities.change_capture == 'polling':
            from superduper.backends.sql.polling import PollingFeed

            return PollingFeed(self, metadata.failure_log(), poll_by=cfg.poll_by, lookback=cfg.poll_lookback)
        from superduper.backends.inline import InlineFeed

        return InlineFeed(self, metadata.failure_log())

    def native_vectors(self, table: str, field: str) -> bool:
        return False

    def keyword_searcher(self, name: str, table: str, key: str, primary_key: str, language: str | None) -> Any:
        """The database's full-text index (``capabilities.full_text``) of ``table.key``: ``backends.sql.full_text``."""
        from superduper.backends.sql.full_text import searcher

        return searcher(self, name, table, key, primary_key, language)

    @functools.cached_property
    def _output_log(self) -> Any:
        from superduper.backends.sql.outputs import SQLOutputLog

        return SQLOutputLog(self)

    def output_log(self) -> Any:
        return self._output_log

    def primary_key_of(self, table: Any) -> str:
        return table.primary_id

    def declared_schema(self, table: Any) -> tuple[Any, str]:
        schema, key = table.resolved_schema, table.primary_id
        self.bind_table(table.identifier, schema.types, key)
        return schema, key

    def new_ids(self, n: int) -> list[str]:
        hexes = os.urandom(16 * n).hex()
        return [hexes[32 * i : 32 * i + 32] for i in range(n)]

    # ---- hooks for dialect modules -------------------------------------------------------------------------
    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        return uri

    @classmethod
    def shareable_uri(cls, uri: str, base_dir: str) -> str:
        """The URI another process (a worker started elsewhere) opens this database with."""
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
            'uuid': sa.Uuid(),
            'any': sa.Text(),
        }[storage]

    def field_type(self, ftype: FieldType) -> Any:
        """The column type for a field; a dialect may store some types natively (pgvector)."""
        return self.column_type(ftype.storage)

    def id_type(self) -> Any:
        return sa.String(ID_LENGTH)

    # ---- change capture (see ``superduper.backends.sql.changes``) ----------------------------------------
    def capture_ddl(self, table: str, key: list[str]) -> list[str]:
        """The statements installing triggers that record every write to ``table`` in ``_superduper_change_log``."""
        raise NotImplementedError(f'{type(self).__name__} cannot record changes with triggers')

    def row_trigger_ddl(self, table: str, bodies: dict[str, tuple[str, str]], body_format: str) -> list[str]:
        """Drop, then create, one row trigger per event of ``bodies`` (event -> (INSERT/UPDATE/DELETE, body)),
        each body written into the dialect's ``body_format``."""
        statements = self.drop_capture_ddl(table)
        for event in EVENTS:
            when, body = bodies[event]
            statements.append(f'CREATE TRIGGER {self.sql_name(self.trigger_name(table, event))} AFTER {when} '
                              f'ON {self.sql_name(table)} ' + body_format.format(body=body))
        return statements

    def drop_capture_ddl(self, table: str) -> list[str]:
        return [f'DROP TRIGGER IF EXISTS {self.sql_name(self.trigger_name(table, event))}' for event in EVENTS]

    def mark_writes(self, conn: Connection, claim: int, changes: sa.Table) -> Any:
        """Make the change rows this transaction writes from now on carry ``claim``; returns what ``unmark_writes``
        needs."""
        raise NotImplementedError

    def unmark_writes(self, conn: Connection, claim: int, mark: Any, changes: sa.Table) -> None:
        pass

    def row_hash(self, table: sa.Table) -> Any:
        """An expression hashing a whole row of ``table`` (every column, NULLs included) to text, for change capture
        by polling (``superduper.backends.sql.polling``)."""
        raise NotImplementedError(f'{type(self).__name__} does not hash rows: it cannot poll for changes')

    @staticmethod
    def trigger_name(table: str, event: str) -> str:
        """A short name derived from the table's (any length, any characters)."""
        return f'_sdc_{zlib.crc32(table.encode()):08x}_{event}'

    def key_text(self, columns: Sequence[Any]) -> Any:
        """The SQL expression rendering a row's primary key as text, the same way in triggers, queued backfills
        and joins: the value cast to text, or a JSON array of the values for a composite key."""
        if len(columns) == 1:
            return sa.cast(columns[0], sa.Text)
        return sa.cast(sa.func.json_array(*columns), sa.Text)

    def key_text_sql(self, row: str, key: list[str]) -> str:
        """``key_text`` of the trigger row ``row`` (``NEW``, ``OLD`` or a transition table alias), as SQL."""
        placeholders = [f'sd_key_placeholder_{i}' for i in range(len(key))]
        sql = str(self.key_text([sa.column(p) for p in placeholders]).compile(dialect=self.dialect))
        for placeholder, name in zip(placeholders, key):  # names escaped once, as ``run_sql`` expects
            sql = sql.replace(placeholder, f'{row}.{self.sql_name(name)}')
        return sql

    def primary_key(self, name: str) -> list[str]:
        return [c.name for c in self.table(name).primary_key.columns]

    def decode_keys(self, name: str, texts: Sequence[str]) -> list:
        """Primary-key values from their ``key_text`` renderings."""
        parsers = [key_parser(c.type) for c in self.table(name).primary_key.columns]
        if len(parsers) == 1:
            parse = parsers[0]
            return [parse(t) for t in texts]
        return [tuple(p(v) for p, v in zip(parsers, json.loads(t))) for t in texts]

    def run_sql(self, conn: Connection, sql: str) -> None:
        """Run a statement built here (DDL): names and literals in it were escaped by ``sql_name``/``sql_literal``,
        for a driver that formats parameters, so it is always given (no) parameters to format."""
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            if self.dialect.identifier_preparer._double_percents:
                cursor.execute(sql, ())
            else:
                cursor.execute(sql)
        except self.dialect.loaded_dbapi.Error as e:
            raise DatabaseError(f'{sql.split("(", 1)[0][:80]} failed: {str(e).strip().splitlines()[0]}') from e
        finally:
            cursor.close()

    def sql_name(self, name: str) -> str:
        """A quoted identifier for SQL run with ``run_sql``."""
        return self.dialect.identifier_preparer.quote_identifier(name)

    def sql_literal(self, value: str) -> str:
        """A string literal for SQL run with ``run_sql``, escaped as the dialect requires (backslashes on MySQL)."""
        return str(sa.literal(value, sa.String).compile(dialect=self.dialect, compile_kwargs={'literal_binds': True}))

    def check_name(self, name: str, what: str = 'table') -> None:
        """Refuse a name longer than the database takes (PostgreSQL would silently cut it)."""
        limit = self.capabilities.identifier_limit
        if limit is not None and len(name.encode()) > limit:
            raise ComponentError(f'{what} name {name!r} is {len(name.encode())} bytes long; '
                                 f'{self.dialect.name} takes at most {limit}')

    def rows_parameter_sql(self) -> str | None:
        """A table expression ``r(d, src, e)`` over the rows given by ``rows_parameter`` (one parameter, however
        many rows), for the one-statement guarded write of stamps; ``None`` where the database cannot do that
        write in one statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``)."""
        return None

    def rows_parameter(self, rows: list[tuple[str, str, str | None]]) -> dict[str, Any]:
        raise NotImplementedError

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        """``INSERT`` that skips rows whose key exists (``executemany`` parameters)."""
        return self.conflict_insert(table).on_conflict_do_nothing(index_elements=key)

    def conflict_insert(self, table: sa.Table) -> Any:
        """The dialect's ``INSERT`` with an ``ON CONFLICT`` clause (PostgreSQL's form, which DuckDB shares; SQLite
        has its own)."""
        from sqlalchemy.dialects.postgresql import insert

        return insert(table)

    def is_deadlock(self, error: sa.exc.DBAPIError) -> bool:
        """Whether the database aborted the transaction to break a deadlock (worth running it again)."""
        code = getattr(error.orig, 'sqlstate', None) or (error.orig.args[0] if error.orig and error.orig.args else None)
        return code in ('40P01', '40001', 1213, 1205)

    def render_keys(self, name: str, keys: Sequence[Any]) -> dict[Any, str]:
        """The ``key_text`` of each of these keys that a row of ``name`` has, as the database renders it."""
        from superduper.base.query import key_in

        source = self.table(name)
        pk = self.primary_key(name)
        columns = [source.c[k] for k in pk]
        found: dict[Any, str] = {}
        with self.engine.connect() as conn:
            for part in chunks(keys):
                stmt = sa.select(*columns, self.key_text(columns))
                stmt = stmt.where(where_clause(source, key_in(tuple(pk), part)))
                for row in conn.execute(stmt):
                    found[row[0] if len(pk) == 1 else tuple(row[:-1])] = row[-1]
        return found

    # ---- connections ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: everything done with the connection commits together or not at all."""
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        with self._readers_lock:
            idle, self._idle_readers = self._idle_readers, []
        for connection in idle:
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

    def current_table(self, name: str) -> sa.Table:
        """The table as superduper declared it, where it did; else as the database describes it now, a reflection
        not kept (unlike ``table``'s: types declared later must not be replaced by reflected ones)."""
        declared = self._tables.get(name)
        if declared is not None:
            return declared
        if not self.has_table(name):
            raise UnknownTable(_unknown_table_message(name, self.table_names(), self.uri))
        return self._reflect(name)

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
            sa.Column(field, self.id_type() if field == primary_key and ftype.storage in ('str', 'any')
                      else self.field_type(ftype),
                      primary_key=field == primary_key, nullable=field != primary_key,
                      autoincrement=False)  # keys are given or made by superduper, never the database's serial
            for field, ftype in types.items()
        ]
        return sa.Table(name, sa.MetaData(), *columns)

    def bind_table(self, name: str, types: dict[str, FieldType], primary_key: str) -> None:
        """Use the declared types (not reflection) for a table superduper created; a field the dialect stores
        natively (vectors) keeps the bytes column an older version created for it.

        The new table replaces the old one in one step: another thread (a consumer writing outputs) never finds the
        name missing, which would make it reflect the table and send vectors as a reflected type would take them."""
        table = self._build(name, types, primary_key)
        native = [f for f, t in types.items() if type(self.field_type(t)) is not type(self.column_type(t.storage))]
        if native and self.has_table(name):
            stored = self._reflect(name).columns
            for field in native:
                if field in stored and not self._same_type(stored[field].type, table.c[field].type):
                    table.c[field].type = self.column_type(types[field].storage)
        self._tables[name] = table
        self._by_key_sql.cache_clear()
        self._insert_sql = {k: v for k, v in self._insert_sql.items() if k[0] != name}

    def _same_type(self, stored: Any, declared: Any) -> bool:
        """Whether a reflected column has the declared type, as the database names it."""
        try:
            return stored.compile(dialect=self.dialect).lower() == declared.compile(dialect=self.dialect).lower()
        except sa.exc.CompileError:  # reflected as a type SQLAlchemy does not know (pgvector's): not bytes
            return True

    def create_table(self, name: str, types: dict[str, FieldType], primary_key: str) -> None:
        """Create the table, or add the declared columns an existing one lacks."""
        self.check_name(name)
        for field in types:
            self.check_name(field, what=f'column of table {name!r}:')
        if not self.has_table(name):
            with self.errors('create', name):
                self._build(name, types, primary_key).create(self.engine)
        else:
            existing = {c.name for c in self._reflect(name).columns}
            if primary_key not in existing:
                raise ComponentError(f'table {name!r} already exists without the primary key column {primary_key!r}')
            missing = [f for f in types if f not in existing]
            with self.begin() as conn:
                for field in missing:
                    self.run_sql(conn, self.add_column_sql(name, field, types[field]))
        self.bind_table(name, types, primary_key)

    def create_statement(self, name: str, types: dict[str, FieldType], primary_key: str) -> sa.schema.CreateTable:
        """The ``CREATE TABLE`` that ``create_table`` runs for a new table."""
        return sa.schema.CreateTable(self._build(name, types, primary_key))

    def add_column_sql(self, name: str, field: str, ftype: FieldType) -> str:
        """The statement adding a declared column to an existing table."""
        ddl = self.field_type(ftype).compile(dialect=self.dialect)
        return f'ALTER TABLE {self.sql_name(name)} ADD COLUMN {self.sql_name(field)} {ddl}'

    def drop_table(self, name: str) -> None:
        with self.begin() as conn:
            self.run_sql(conn, self.drop_table_sql(name))
        self.forget(name)

    def drop_table_sql(self, name: str) -> str:
        return f'DROP TABLE IF EXISTS {self.sql_name(name)}'

    def _quote(self, identifier: str) -> str:
        return self.dialect.identifier_preparer.quote(identifier)

    # ---- writes ---------------------------------------------------------------------------------------------
    def insert_batches(self, conn: Connection, name: str, keys: Sequence[str], batches: list[list[list]]) -> None:
        for columns in batches:  # all or none: ``conn`` is the caller's transaction
            self.insert(conn, name, keys, columns)

    def insert(
        self, conn: Connection, name: str, keys: Sequence[str], columns: list[list], upsert_key: str | None = None
    ) -> None:
        """Insert rows given column by column (all of equal length) with one ``executemany``; with ``upsert_key``,
        a row whose key exists already replaces the stored one."""
        if not self.stores_nan:
            self._check_finite(name, keys, columns)
        self._check_sizes(name, keys, columns)
        sql, arrange = self._compiled_insert(name, tuple(keys), upsert_key)
        params = arrange(columns)
        with self.errors('insert into', name):
            if sql is None:  # a dialect with no upsert: delete, then insert, in the caller's transaction
                table = self.table(name)
                key_values = columns[list(keys).index(upsert_key)]
                for part in chunks(key_values):
                    conn.execute(table.delete().where(table.c[upsert_key].in_(part)))
                sql, arrange = self._compiled_insert(name, tuple(keys), None)
            conn.exec_driver_sql(sql, params)

    def _check_finite(self, name: str, keys: Sequence[str], columns: list[list]) -> None:
        """Refuse NaN and infinity in float columns where the database cannot store them (SQLite would keep
        NULL instead, silently)."""
        table = self.table(name)
        for key, values in zip(keys, columns):
            if isinstance(table.c[key].type, sa.Float):
                for i, v in enumerate(values):
                    if isinstance(v, float) and not math.isfinite(v):
                        raise InvalidValue(
                            f'table {name!r}, field {key!r}, row {i}: {v!r} cannot be stored in '
                            f'{self.dialect.name} (it has no NaN or infinity); store None for a missing value')

    def statement_limit(self) -> int | None:
        """The most bytes one statement can carry to the server (``None``: no limit worth checking)."""
        return None

    def _check_sizes(self, name: str, keys: Sequence[str], columns: list[list]) -> None:
        """Refuse a row larger than one statement can carry, naming it, instead of the server hanging up."""
        limit = self.statement_limit()
        if limit is None:
            return
        sizes = [0] * (len(columns[0]) if columns else 0)
        largest: list[tuple[int, str]] = [(0, '')] * len(sizes)  # per row: the size and name of its largest field
        for key, values in zip(keys, columns):
            for i, v in enumerate(values):
                if isinstance(v, (bytes, str)):
                    size = len(v) if isinstance(v, bytes) else len(v.encode('utf-8', 'surrogatepass'))
                    sizes[i] += size
                    largest[i] = max(largest[i], (size, key))
        for i, size in enumerate(sizes):
            if size > limit:
                raise InvalidValue(
                    f'table {name!r}, field {largest[i][1]!r}, row {i}: the row is {size:,} bytes; the '
                    f'{self.dialect.name} server takes at most {limit:,} in one statement (max_allowed_packet)')

    def insert_returning(self, conn: Connection, name: str, rows: list[dict]) -> list[tuple]:
        """Insert letting the database generate the primary key (tables with autoincrement keys)."""
        table = self.table(name)
        stmt = table.insert().returning(*table.primary_key.columns, sort_by_parameter_order=True)
        with self.errors('insert into', name):
            return [tuple(r) for r in conn.execute(stmt, rows)]

    def upsert_suffix(self, keys: Sequence[str], key: str) -> str | None:
        """Where a dialect's upsert is the plain insert with a clause after it (written here, because SQLAlchemy's
        escapes it wrongly), that clause."""
        return None

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str | Sequence[str]) -> Any | None:
        """``INSERT ... ON CONFLICT`` on ``key`` (a column, or the columns of a composite key) for this dialect, or
        ``None`` where it is ``upsert_suffix`` or there is none."""
        if not self.capabilities.upsert:
            return None
        stmt = self.conflict_insert(table)
        index = [key] if isinstance(key, str) else list(key)
        updates = {k: stmt.excluded[k] for k in keys if k not in index}
        if not updates:
            return stmt.on_conflict_do_nothing(index_elements=index)
        return stmt.on_conflict_do_update(index_elements=index, set_=updates)

    def _compiled_insert(self, name: str, keys: tuple[str, ...], upsert_key: str | None) -> tuple[str | None, Any]:
        cached = self._insert_sql.get((name, keys, upsert_key))
        if cached:
            return cached
        table = self.table(name)
        suffix = None if upsert_key is None else self.upsert_suffix(keys, upsert_key)
        if upsert_key is None or suffix is not None:
            stmt = table.insert()
        else:
            stmt = self.upsert_statement(table, keys, upsert_key)
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

        entry = (str(compiled) + (suffix or '') if stmt is not None else None, arrange)
        self._insert_sql[(name, keys, upsert_key)] = entry
        return entry

    def update(self, conn: Connection, name: str, values: dict[str, Any], where: Condition | None) -> int:
        if not self.stores_nan:
            self._check_finite(name, list(values), [[v] for v in values.values()])
        self._check_sizes(name, list(values), [[v] for v in values.values()])
        with self.errors('update', name):
            return conn.execute(self.update_statement(name, values, where)).rowcount

    def update_statement(self, name: str, values: dict[str, Any], where: Condition | None) -> Any:
        table = self.table(name)
        stmt = table.update().values(**values)
        return stmt if where is None else stmt.where(where_clause(table, where))

    def delete(self, conn: Connection, name: str, where: Condition | None) -> int:
        with self.errors('delete from', name):
            return conn.execute(self.delete_statement(name, where)).rowcount

    def delete_statement(self, name: str, where: Condition | None) -> Any:
        table = self.table(name)
        return table.delete() if where is None else table.delete().where(where_clause(table, where))

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
        joins: Sequence[tuple[str, str, Any, str]] = (),
    ) -> Iterator[list]:
        """Batches of row tuples in ``columns`` order (then one column per join), streamed from the database.

        ``joins`` are ``(table, column, on, key)``: a left join adding ``table.column`` where ``name.on ==
        table.key`` (a listener's outputs next to their source rows)."""
        stmt = self.select_statement(name, columns, where, order_by, limit, offset, joins)
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
                with self.errors('select from', name):
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

    def select_statement(
        self,
        name: str,
        columns: Sequence[str],
        where: Condition | None = None,
        order_by: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        joins: Sequence[tuple[str, str, Any, str]] = (),
    ) -> Any:
        """The ``SELECT`` that ``select`` runs."""
        table = self.table(name)
        selected = [table.c[c] for c in columns]
        source: Any = table
        for other_name, column, on, key in joins:
            other = self.table(other_name)
            selected.append(other.c[column])
            if isinstance(on, tuple):  # a composite key: the outputs hold its text rendering
                source = source.outerjoin(other, self.key_text([table.c[c] for c in on]) == other.c[key])
            else:
                source = source.outerjoin(other, table.c[on] == other.c[key])
        stmt = sa.select(*selected).select_from(source)
        if where is not None:
            stmt = stmt.where(where_clause(table, where))
        for column, descending in order_by:
            stmt = stmt.order_by(table.c[column].desc() if descending else table.c[column])
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        return stmt

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
        with self.errors('select from', name):
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
            yield convert_columns(batch, convert) if convert else batch

    def rows_by_key(self, name: str, columns: Sequence[str], key: str, values: Sequence[Any]) -> list:
        """The rows whose ``key`` is one of ``values`` (a few, such as vector search hits), through SQL compiled once
        per shape and run on the driver's cursor: the hot path of a vector search."""
        if not values:
            return []
        sql, names, types = self._by_key_sql(name, tuple(columns), key, len(values))
        params = self.by_key_parameters(names, values)
        with self._read_connection() as dbapi_connection, self.errors('select from', name):
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
                codes = tuple(desc[1] for desc in cursor.description)
                try:
                    convert = self._by_key_converters(types, codes)
                except TypeError:  # a driver whose type codes cannot be hashed: chosen each time
                    convert = self._by_key_converters.__wrapped__(self, types, codes)
            finally:
                cursor.close()
        return convert_columns(rows, convert) if convert and rows else rows

    def by_key_parameters(self, names: list[str] | None, values: Sequence[Any]) -> Any:
        """The driver's parameters of ``_by_key_sql``'s statement: one per key value (named, or in order)."""
        return tuple(values) if names is None else dict(zip(names, values))

    @contextlib.contextmanager
    def _read_connection(self) -> Iterator[Any]:
        """A driver connection for a short read, from a few kept checked out of the pool (a pool checkout costs as
        much as the read); at most ``IDLE_READERS`` wait between reads, so that any number of threads (a server's)
        leave the pool its connections. A shared single connection (DuckDB, in-memory SQLite) goes through the pool."""
        if isinstance(self.engine.pool, sa.pool.StaticPool):
            with self.engine.connect() as conn:
                yield conn.connection.dbapi_connection
            return
        connection = self._idle_reader()
        try:
            yield connection.dbapi_connection
            connection.dbapi_connection.rollback()  # hold no snapshot or lock between reads
        except Exception:
            connection.invalidate()
            raise
        with self._readers_lock:
            if len(self._idle_readers) < IDLE_READERS:
                self._idle_readers.append(connection)
                return
        connection.close()  # back to the pool

    def _idle_reader(self) -> Any:
        with self._readers_lock:
            if self._readers_pid != os.getpid():  # a forked child must not share its parent's sockets
                self._idle_readers, self._readers_pid = [], os.getpid()
            if self._idle_readers:
                return self._idle_readers.pop()
        return self.engine.raw_connection()

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one backend per database; entries are small)
    def _by_key_sql(self, name: str, columns: tuple[str, ...], key: str, count: int) -> tuple[str, Any, tuple]:
        """The statement, its parameter names (``None``: positional) and the selected columns' dialect types."""
        table = self.table(name)
        selected = [table.c[c] for c in columns]
        stmt = sa.select(*selected).where(
            table.c[key].in_(sa.bindparam('keys', value=[None] * count, expanding=True))
        )
        compiled = stmt.compile(dialect=self.dialect, compile_kwargs={'render_postcompile': True})
        names = None if compiled.positional else [compiled.escaped_bind_names.get(f'keys_{i + 1}', f'keys_{i + 1}')
                                                 for i in range(count)]
        return str(compiled), names, tuple(col.type.dialect_impl(self.dialect) for col in selected)

    @functools.lru_cache(maxsize=256)  # noqa: B019 (as _by_key_sql)
    def _by_key_converters(self, types: tuple, codes: tuple) -> list:
        """The conversions of ``_by_key_sql``'s columns, chosen with the driver's type codes (PostgreSQL's float
        types have none without them)."""
        return [(i, proc) for i, (impl, code) in enumerate(zip(types, codes))
                if (proc := impl.result_processor(self.dialect, code))]

    def count_by_key(self, name: str, key: str, values: Sequence[Any], where: Condition) -> int:
        """How many of ``values`` (a few keys: a filtered vector search's hits) have a row matching ``where``,
        through SQL compiled once per table, filter and number of keys (a search checks its hits on every query)."""
        if not values:
            return 0
        cls = type(self)
        plain_driver = cls.rows_by_key is SQLDataBackend.rows_by_key \
            and cls.by_key_parameters is SQLDataBackend.by_key_parameters  # else its reads need more than the driver
        query = self._count_by_key_sql(name, key, len(values), where) if plain_driver else None
        if query is None:  # a parameter needs SQLAlchemy's conversion: compiled each time
            table = self.table(name)
            stmt = sa.select(sa.func.count()).select_from(table).where(where_clause(table, where),
                                                                       table.c[key].in_(list(values)))
            with self.engine.connect() as conn, self.errors('select from', name):
                return int(conn.execute(stmt).scalar_one())
        sql, template, slots = query
        params = list(template) if isinstance(template, tuple) else dict(template)
        for slot, value in zip(slots, values):
            params[slot] = value
        with self._read_connection() as dbapi_connection, self.errors('select from', name):
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql, tuple(params) if isinstance(params, list) else params)
                return int(cursor.fetchone()[0])
            finally:
                cursor.close()

    def _count_by_key_sql(self, name: str, key: str, count: int, where: Condition) -> tuple | None:
        """``count_by_key``'s statement, its parameters (a tuple if positional) and where the keys go in them;
        ``None`` if a parameter needs converting by SQLAlchemy. Kept per (table, key, count, filter)."""
        cache_key = (name, key, count, repr(where))
        found = self._count_by_key_cache.get(cache_key, False)
        if found is not False:
            return found
        table = self.table(name)
        stmt = sa.select(sa.func.count()).select_from(table).where(
            where_clause(table, where), table.c[key].in_(sa.bindparam('keys', value=[None] * count, expanding=True)))
        compiled = stmt.compile(dialect=self.dialect, compile_kwargs={'render_postcompile': True})
        found = None
        if not any(b.type._cached_bind_processor(self.dialect) for b in compiled.binds.values()):
            params = compiled.construct_params()
            names = [f'keys_{i + 1}' for i in range(count)]
            if compiled.positional:
                order = list(compiled.positiontup)
                found = (str(compiled), tuple(params[k] for k in order), [order.index(k) for k in names])
            else:
                escaped = compiled.escaped_bind_names
                found = (str(compiled), {escaped.get(k, k): v for k, v in params.items()},
                         [escaped.get(k, k) for k in names])
        if len(self._count_by_key_cache) >= 256:
            self._count_by_key_cache.clear()
        self._count_by_key_cache[cache_key] = found
        return found

    def count(self, name: str, where: Condition | None = None) -> int:
        table = self.table(name)
        stmt = sa.select(sa.func.count()).select_from(table)
        if where is not None:
            stmt = stmt.where(where_clause(table, where))
        with self.engine.connect() as conn, self.errors('count', name):
            return conn.execute(stmt).scalar_one()

    # ---- filters --------------------------------------------------------------------------------------------
    def compile_condition(self, table: sa.Table, cond: Condition) -> Any:
        """A condition tree as a SQLAlchemy expression on ``table``."""
        return where_clause(table, cond)

    @contextlib.contextmanager
    def errors(self, action: str, name: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            raise DatabaseError(f'{action} table {name!r} failed: {reason}') from e
        except self.dialect.loaded_dbapi.Error as e:  # from a driver cursor used directly
            reason = str(e).strip().splitlines()[0]
            raise DatabaseError(f'{action} table {name!r} failed: {reason}') from e


def _unknown_table_message(name: str, existing: list[str], uri: str) -> str:
    visible = [t for t in existing if not t.startswith('_superduper')]
    return f'table {name!r} does not exist in {_redact(uri)}; tables: {", ".join(visible) or "(none)"}'


def _redact(uri: str) -> str:
    """The URI without its password."""
    try:
        return sa.engine.make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri
