"""A folder of Parquet, CSV and Delta Lake tables as a database: ``parquet://./data`` (``?engine=`` picks the engine
that runs queries: duckdb, the default, polars, datafusion or pyspark).

- Tables are what ``superduper.backends.lake.folder`` finds in the folder; reads run on the engine
  (``superduper.backends.lake.engines``) as ibis expressions over each table's current data.
- Writes are Delta Lake commits (``deltalake``): an insert is one append, an upsert, update or delete one ``MERGE``
  on the primary key, so each is atomic. Listeners' outputs are Delta tables beside the data
  (``_outputs__<listener>__<uuid>/``), readable by any Delta reader.
- superduper's own state lives in ``.superduper/state.db`` in the folder (SQLite): the metadata (components, jobs,
  failures) and the numbers of outputs writes. A unit of writes (``begin``) is a write transaction on it, so writes
  through superduper, from any process, run one at a time: a plain insert checks that its keys are new and appends
  with no other superduper writer in between. Each Delta commit stands alone (``transactions=False``): a failing
  unit keeps the commits it made before failing.
- A table's primary key: the one its ``Table`` declares (or superduper gave a table it made, recorded in the state
  database, since Delta tables record none); else a column named ``id`` or ``_id``.

Other programs' commits to Delta tables reach listeners by their table versions (``change_capture='versions'``,
``superduper.backends.lake.versions``). ``FramesDataBackend`` is the same over in-memory DataFrames
(``superduper.backends.lake.frames``), whose state lives in an in-memory SQLite database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

from superduper.backends.base import Capabilities
from superduper.backends.feed import chunks
from superduper.backends.lake import arrow_types
from superduper.backends.lake.engines import Engine, connect_engine
from superduper.backends.lake.folder import Folder
from superduper.base.exceptions import ComponentError, ConfigError, DatabaseError
from superduper.base.query import And, Compare, Condition, KeysIn, Not, Or

if TYPE_CHECKING:
    import ibis.expr.types as ir
    import pyarrow as pa

    from superduper.components.datatype import FieldType


#: the state database's setting holding the primary key of a table superduper created (``primary_key:<table>``)
KEY_SETTING = 'primary_key:'


class LakeDataBackend:
    scheme: ClassVar[str] = 'parquet'
    capabilities: ClassVar[Capabilities] = Capabilities(
        change_capture='versions', transactions=False, upsert=True, serialized_writes=True, generated_keys=False,
        columnar_reads=True)
    tested: ClassVar[str] = ('the shared suite on DuckDB, its queries, listeners and results on Polars and DataFusion '
                             'too, in CI; the engine tests on PySpark, in CI')
    schemaless: ClassVar[bool] = False

    def __init__(self, uri: str, session: Any = None):
        path, options = parse_uri(uri)
        engine = connect_engine(options.get('engine', 'duckdb'), session)
        os.makedirs(path, exist_ok=True)
        folder = Folder(path)
        self._wire(uri, folder, f'sqlite://{os.path.join(folder.state, "state.db")}', engine)

    def _wire(self, uri: str, storage: Any, state_uri: str, engine: Engine) -> None:
        from superduper.backends.sql.sqlite import SQLiteDataBackend

        self.uri = uri
        self.storage = storage  # where the tables are: ``Folder`` (files) or ``Frames`` (memory)
        self.query_engine = engine
        self.state = SQLiteDataBackend(state_uri)
        self._declared: dict[str, tuple[dict[str, FieldType], str]] = {}  # table -> (types, primary key)
        self._keys: dict[str, list[str]] = {}  # table without a declaration -> its primary key, as described
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.uri!r})'

    @classmethod
    def missing(cls, uri: str) -> str | None:
        path, _ = parse_uri(uri)
        return None if os.path.isdir(path) else f'no folder at {os.path.abspath(path)}'

    @classmethod
    def shareable_uri(cls, uri: str, base_dir: str) -> str:
        path, _ = parse_uri(uri)
        query = uri.partition('?')[2]
        return f'{cls.scheme}://{os.path.normpath(os.path.join(base_dir, path))}' + (f'?{query}' if query else '')

    # ---- wiring ------------------------------------------------------------------------------------------------
    def metadata_store(self) -> Any:
        return self.state.metadata_store()

    def default_artifact_store(self, cache_dir: str) -> None:
        return None

    def output_log(self) -> Any:
        with self._lock:
            if not hasattr(self, '_output_log'):
                from superduper.backends.lake.outputs import LakeOutputLog

                self._output_log = LakeOutputLog(self)
            return self._output_log

    def change_feed(self, cfg: Any, metadata: Any) -> Any:
        from superduper.backends.lake.versions import VersionFeed

        return VersionFeed(self, metadata.failure_log())

    def native_vectors(self, table: str, field: str) -> bool:
        return False

    def native_searcher(self, db: Any, index: Any) -> None:
        return None

    # ---- connections -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def begin(self) -> Iterator[Any]:
        """A write transaction on the state database: superduper's writers, in every process, one at a time."""
        with self.state.begin() as conn:
            yield conn

    def close(self) -> None:
        self.query_engine.close()
        self.state.close()

    # ---- tables ------------------------------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        return list(self.storage.tables())

    def has_table(self, name: str) -> bool:
        return self.storage.find(name) is not None

    def describe(self, name: str) -> tuple[dict[str, str], tuple[str, ...]]:
        schema = self.storage.schema(name)
        kinds = {f.name: arrow_types.storage_of(f.type) for f in schema}
        key = self._recorded_key(name) or next((k for k in ('id', '_id') if k in kinds), None)
        return kinds, (key,) if key else ()

    def _recorded_key(self, name: str) -> str | None:
        """The primary key superduper gave a table it created (Delta tables record none), from the state database."""
        return self._settings.setting(KEY_SETTING + name) or None

    @functools.cached_property
    def _settings(self) -> Any:
        return self.state.metadata_store()

    def primary_key_of(self, table: Any) -> str:
        return table.primary_id

    def primary_key(self, name: str) -> list[str]:
        declared = self._declared.get(name)
        if declared is not None:
            return [declared[1]]
        found = self._keys.get(name)
        if found is None:  # kept: a poll of other programs' commits asks for it every time
            found = self._keys[name] = list(self.describe(name)[1])
        return found

    def declared_schema(self, table: Any) -> tuple[Any, str]:
        schema, key = table.resolved_schema, table.primary_id
        self.bind_table(table.identifier, schema.types, key)
        return schema, key

    def new_ids(self, n: int) -> list[str]:
        hexes = os.urandom(16 * n).hex()
        return [hexes[32 * i : 32 * i + 32] for i in range(n)]

    def bind_table(self, name: str, types: dict[str, 'FieldType'], primary_key: str) -> None:
        self._declared[name] = (dict(types), primary_key)
        self._keys.pop(name, None)

    def create_table(self, name: str, types: dict[str, 'FieldType'], primary_key: str) -> None:
        """A new table, or the declared columns an existing one lacks added to it."""
        import pyarrow as pa

        fields = [pa.field(f, arrow_types.arrow_type(t), nullable=f != primary_key) for f, t in types.items()]
        found = self.storage.find(name)
        with self._errors('create', name):
            if found is None:
                self._settings.set_setting(KEY_SETTING + name, primary_key)
                self.storage.create(name, pa.schema(fields))
            else:
                existing = set(self.storage.schema(name).names)
                if primary_key not in existing:
                    raise ComponentError(f'table {name!r} already exists without the primary key column {primary_key!r}')
                missing = [f.with_nullable(True) for f in fields if f.name not in existing]
                if missing:
                    self.storage.add_columns(name, missing)
        self.bind_table(name, types, primary_key)

    def drop_table(self, name: str) -> None:
        self.storage.drop(name)
        self._declared.pop(name, None)
        self._keys.pop(name, None)
        if self._recorded_key(name) is not None:
            self._settings.set_setting(KEY_SETTING + name, '')

    def forget(self, name: str) -> None:
        self.storage.forget(name)

    # ---- writes ------------------------------------------------------------------------------------------------
    def insert(self, conn: Any, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> None:
        if not columns or not columns[0]:
            return
        data = self._arrow(name, keys, columns)
        with self._errors('insert into', name):
            if upsert_key is not None:
                self.storage.merge(name, data, upsert_key, update=True, insert=True)
            else:
                self._append(name, data)

    def insert_batches(self, conn: Any, name: str, keys: Sequence[str], batches: list[list[list]]) -> None:
        """All the batches in one append: one Delta commit, so all or none."""
        joined = [list(itertools.chain.from_iterable(batch[i] for batch in batches)) for i in range(len(keys))]
        self.insert(conn, name, keys, joined)

    def insert_returning(self, conn: Any, name: str, rows: list[dict]) -> list[tuple]:
        raise DatabaseError(f'insert into table {name!r} failed: a Delta table does not make keys; give each row '
                            f'its {self.primary_key(name)} value')

    def update(self, conn: Any, name: str, values: dict[str, Any], where: Condition | None) -> int:
        key = self._key(name, 'update')
        if key in values:  # a MERGE matches rows by their key: it cannot change it
            raise DatabaseError(f'update table {name!r} failed: changing the primary key {key!r} is not supported '
                                'on a folder; delete the row and insert it again')
        found = self._keys_where(name, key, where)
        if not found:
            return 0
        names = [key, *values]
        columns = [found] + [[values[v]] * len(found) for v in values]
        data = self._arrow(name, names, columns, full=False)
        with self._errors('update', name):
            self.storage.merge(name, data, key, update=True)
        return len(found)

    def delete(self, conn: Any, name: str, where: Condition | None) -> int:
        key = self._key(name, 'delete from')
        found = self._keys_where(name, key, where)
        if not found:
            return 0
        data = self._arrow(name, [key], [found], full=False)
        with self._errors('delete from', name):
            self.storage.merge(name, data, key, delete=True)
        return len(found)

    def _key(self, name: str, action: str) -> str:
        key = self.primary_key(name)
        if len(key) != 1:
            raise DatabaseError(f'{action} table {name!r} failed: it has no primary key (declare one with '
                                "Table(..., primary_id=...), or name a column 'id')")
        return key[0]

    def _keys_where(self, name: str, key: str, where: Condition | None) -> list:
        return [row[0] for batch in self.select(name, [key], where, batch_size=100_000) for row in batch]

    def _arrow(self, name: str, keys: Sequence[str], columns: list[list], full: bool = True) -> 'pa.Table':
        """Columns of encoded values as an Arrow table of the stored table's types (every column, missing ones
        null, where ``full``)."""
        import pyarrow as pa

        schema = self.storage.schema(name)
        storages = self._storages(name)
        given = dict(zip(keys, columns))
        unknown = [k for k in keys if schema.get_field_index(k) < 0]
        if unknown:
            raise DatabaseError(f'insert into table {name!r} failed: no column {unknown[0]!r}')
        fields = list(schema) if full else [schema.field(k) for k in keys]
        count = len(columns[0])
        arrays = [arrow_types.to_array(given[f.name], f.type, storages.get(f.name)) if f.name in given
                  else pa.nulls(count, f.type) for f in fields]
        return pa.Table.from_arrays(arrays, schema=pa.schema([f.with_nullable(True) for f in fields]))

    def _reader(self, name: str, table: 'ir.Table', column: str) -> Any:
        """How a column of ``name`` (``table`` in ibis) reads back."""
        return arrow_types.reader(self._storages(name).get(column), table.schema()[column].to_pyarrow())

    def _storages(self, name: str) -> dict[str, str]:
        declared = self._declared.get(name)
        if declared is not None:
            return {f: t.storage for f, t in declared[0].items()}
        return {}

    def _append(self, name: str, data: 'pa.Table') -> None:
        """Append rows whose keys are new (checked first: the storage enforces no key; the state database's write
        lock keeps other superduper writers out meanwhile)."""
        key = self.primary_key(name)
        if len(key) == 1 and key[0] in data.column_names:
            values = data.column(key[0]).to_pylist()
            if len(set(values)) < len(values):
                raise DatabaseError(f'insert into table {name!r} failed: a key is given twice')
            for part in chunks(values, 10_000):
                taken = self.rows_by_key(name, key, key[0], part)
                if taken:
                    raise DatabaseError(f'insert into table {name!r} failed: key {taken[0][0]!r} is stored already')
        self.storage.append(name, data)

    # ---- reads -------------------------------------------------------------------------------------------------
    def _table(self, name: str) -> 'ir.Table':
        import ibis

        source = self.storage.source(name)
        self.query_engine.register(source)
        return ibis.table(ibis.Schema.from_pyarrow(source.dataset.schema), name=name)

    def select(self, name: str, columns: Sequence[str] | None, where: Condition | None = None,
               order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None, offset: int = 0,
               batch_size: int = 2000, joins: Sequence[tuple[str, str, Any, str]] = ()) -> Iterator[list]:
        expr, readers = self._query(name, columns, where, order_by, limit, offset, joins)
        with self._errors('select from', name):
            for batch in self.query_engine.batches(expr, batch_size):
                if batch.num_rows:
                    yield arrow_types.rows_of(batch, readers)

    def select_columns(self, name: str, columns: Sequence[str] | None, where: Condition | None = None,
                       order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None, offset: int = 0,
                       batch_size: int = 2000, joins: Sequence[tuple[str, str, Any, str]] = ()) -> Iterator[list]:
        """As ``select``, each batch as columns: the engine's Arrow arrays, or lists where values read back
        (JSON text, UUIDs)."""
        expr, readers = self._query(name, columns, where, order_by, limit, offset, joins)
        with self._errors('select from', name):
            for batch in self.query_engine.batches(expr, batch_size):
                if batch.num_rows:
                    yield [column if read is None else read(column) for column, read in zip(batch.columns, readers)]

    def _query(self, name: str, columns: Sequence[str] | None, where: Condition | None,
               order_by: Sequence[tuple[str, bool]], limit: int | None, offset: int,
               joins: Sequence[tuple[str, str, Any, str]]) -> tuple['ir.Table', list]:
        """The ibis expression of a select, and how each of its result columns reads back."""
        import ibis

        table = self._table(name)
        columns = list(columns) if columns is not None else list(table.columns)
        base = table.filter(condition(table, where)) if where is not None else table
        selected = [base[c] for c in columns]
        readers = [self._reader(name, table, c) for c in columns]
        expr = base
        for i, (other_name, column, on, key) in enumerate(joins):
            other = self._table(other_name)
            if isinstance(on, tuple):
                raise DatabaseError(f'select from table {name!r} failed: a composite key cannot be joined here')
            expr = expr.left_join(other, base[on] == other[key])
            selected.append(other[column].name(f'_j{i}'))
            readers.append(self._reader(other_name, other, column))
        # the order's columns go last, unread (``rows_of`` and ``select_columns`` read as many as there are readers)
        ordering = [base[c].name(f'_o{i}') for i, (c, _) in enumerate(order_by)]
        expr = expr.select(*selected, *ordering)
        if order_by:
            expr = expr.order_by([ibis.desc(o.get_name()) if descending else ibis.asc(o.get_name())
                                  for o, (_, descending) in zip(ordering, order_by)])
        if limit is not None or offset:
            expr = expr.limit(limit, offset=offset)
        return expr, readers

    def rows_by_key(self, name: str, columns: Sequence[str] | None, key: str, values: Sequence[Any]) -> list:
        if not values:
            return []
        found = []
        for part in chunks(list(values)):
            for batch in self.select(name, columns, Compare(key, 'in', tuple(part)), batch_size=len(part)):
                found.extend(batch)
        return found

    def count(self, name: str, where: Condition | None = None) -> int:
        table = self._table(name)
        expr = table.filter(condition(table, where)) if where is not None else table
        with self._errors('count', name):
            return int(self.query_engine.scalar(expr.count()) or 0)

    @contextlib.contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        try:
            yield
        except (DatabaseError, ComponentError):
            raise
        except Exception as e:
            if type(e).__module__.startswith(('superduper',)):
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DatabaseError(f'{action} table {name!r} failed: {reason}') from e


def condition(table: 'ir.Table', cond: Condition) -> Any:
    """A condition tree of ``superduper.base.query`` as an ibis boolean expression on ``table``."""
    import ibis

    if isinstance(cond, KeysIn):
        parts = [ibis.and_(*[table[f] == v for f, v in zip(cond.fields_, values)]) for values in cond.values]
        return ibis.or_(*parts) if parts else ibis.literal(False)
    if isinstance(cond, Compare):
        column, value = table[cond.field], _plain(cond.value)
        if cond.op == '==':
            return column.isnull() if value is None else column == value
        if cond.op == '!=':
            return column.notnull() if value is None else column != value
        if cond.op == 'in':
            values = [_plain(v) for v in cond.value]
            return column.isin(values) if values else ibis.literal(False)
        return {'<': column.__lt__, '<=': column.__le__, '>': column.__gt__, '>=': column.__ge__}[cond.op](value)
    if isinstance(cond, And):
        return ibis.and_(*[condition(table, c) for c in cond.parts])
    if isinstance(cond, Or):
        return ibis.or_(*[condition(table, c) for c in cond.parts])
    if isinstance(cond, Not):
        return ~condition(table, cond.part)
    raise TypeError(f'not a condition: {cond!r}')


def _plain(value: Any) -> Any:
    """A filter value as the column stores it (UUIDs as text)."""
    import uuid

    return str(value) if isinstance(value, uuid.UUID) else value


def parse_uri(uri: str) -> tuple[str, dict[str, str]]:
    """The folder and the options of ``parquet://<folder>[?engine=...]``."""
    rest = uri.partition('://')[2]
    path, _, query = rest.partition('?')
    if not path:
        raise ConfigError(f'{uri!r} names no folder: parquet://<folder>, e.g. parquet://./data')
    options = dict(urllib.parse.parse_qsl(query))
    unknown = set(options) - {'engine'}
    if unknown:
        raise ConfigError(f'unknown option {sorted(unknown)[0]!r} in {uri!r}; known: engine')
    return path, options


class FramesDataBackend(LakeDataBackend):
    """In-memory DataFrames as a database, for notebooks: ``superduper({'orders': df})`` with pandas or Polars
    frames or Arrow tables. The frames are copied in; writes, listeners' outputs and the metadata live in this
    process only (read results back with ``.execute().to_pandas()``)."""

    scheme = 'frames'
    label = "`superduper({'t': df})`"  # in the capability table: no URI opens DataFrames
    capabilities = dataclasses.replace(LakeDataBackend.capabilities, change_capture='none', shared=False,
                                       persistent=False, opened_by_uri=False,
                                       unshared_reason='in-memory DataFrames live in one process')
    tested = 'the shared suite (DuckDB engine), in CI'

    def __init__(self, frames: dict[str, Any]):
        from superduper.backends.lake.frames import Frames

        if not isinstance(frames, dict):
            raise ConfigError("DataFrames are given as a dict, superduper({'orders': df}), not as a URI")
        self._wire(f'frames://{id(frames):x}', Frames(frames), 'sqlite://:memory:', connect_engine('duckdb'))

    def change_feed(self, cfg: Any, metadata: Any) -> Any:
        from superduper.backends.inline import InlineFeed

        return InlineFeed(self, metadata.failure_log())  # nothing but this process writes the frames

    @classmethod
    def missing(cls, uri: str) -> str | None:
        return None

    @classmethod
    def shareable_uri(cls, uri: str, base_dir: str) -> str:
        raise ConfigError('in-memory DataFrames live in this process only: save them to a folder and use '
                          'parquet://<folder> to share them')

