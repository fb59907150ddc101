"""The engines that run queries over a folder's tables and over in-memory DataFrames: DuckDB, Polars, DataFusion
and PySpark, behind one small interface.

Queries are ibis expressions over unbound tables (``ibis.table(schema, name)``), built once by the lake backend
whatever the engine: ibis compiles them to each engine's SQL (sqlglot) or, for Polars, to a lazy frame, so no query
is translated by hand per engine. An engine only registers the current data of each table and runs a compiled
expression, streaming Arrow record batches. (ibis's own backend objects are not used to run queries: ibis 12 calls
APIs DuckDB 2 removed, and it cannot register a table's new version in place.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

if TYPE_CHECKING:
    import ibis.expr.types as ir
    import pyarrow as pa
    import pyarrow.dataset as pads


@dataclass(frozen=True)
class TableSource:
    """The current data of one table: an Arrow dataset (always), and where the table is a set of Parquet files
    holding exactly its rows (a Delta table's current files, a Parquet file or folder), their paths, for engines
    that read files themselves (PySpark)."""

    name: str
    dataset: 'pads.Dataset'
    files: tuple[str, ...] | None = None


class Engine(Protocol):
    #: the name a URI or setting picks it by (``?engine=polars``)
    name: str

    def register(self, source: TableSource) -> None:
        """Make ``source`` the data of table ``source.name`` (replacing what was registered under that name)."""

    def unregister(self, name: str) -> None: ...

    def batches(self, expr: 'ir.Table', batch_size: int) -> Iterator['pa.RecordBatch']:
        """The rows of ``expr`` (over tables registered here), at most ``batch_size`` per batch."""

    def close(self) -> None: ...


class DuckDBEngine:
    """DuckDB in process. A query runs on a cursor of a pool, one cursor per query running (a read may be open while
    another runs: a backfill reads keys while counting), each with the tables registered on it (DuckDB
    registrations belong to one connection); Python objects are never scanned by name."""

    name = 'duckdb'

    def __init__(self, session: Any = None):
        import duckdb

        self._db = session if session is not None else duckdb.connect()
        self._db.execute('SET python_enable_replacements = false')
        self._sources: dict[str, TableSource] = {}
        self._lock = threading.Lock()
        self._idle: list[tuple[Any, dict[str, TableSource]]] = []  # cursors with what is registered on each

    def register(self, source: TableSource) -> None:
        with self._lock:
            self._sources[source.name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            self._sources.pop(name, None)

    def _take(self, names: list[str]) -> tuple[Any, dict[str, TableSource]]:
        with self._lock:
            cursor, registered = self._idle.pop() if self._idle else (self._db.cursor(), {})
            sources = {n: self._sources[n] for n in names if n in self._sources}
        for name, source in sources.items():
            if registered.get(name) is not source:
                self._replace(cursor, name, source)
                registered[name] = source
        return cursor, registered

    @staticmethod
    def _replace(cursor: Any, name: str, source: TableSource) -> None:
        """Register ``source`` as ``name`` on one cursor, in place of what was there (a view or an object)."""
        cursor.unregister(name)
        cursor.execute(f'DROP VIEW IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
        if source.files:  # DuckDB's own Parquet reader: parallel, with filters pushed into the files
            files = cursor.read_parquet(list(source.files), union_by_name=True)
            if set(files.columns) >= set(source.dataset.schema.names):
                files.create_view(name, replace=True)
                return
        if source.files:  # files written before a column was added lack it: the dataset fills it in
            cursor.register(name, source.dataset)
        elif source.files is not None:  # no file yet (an empty table)
            cursor.register(name, source.dataset.schema.empty_table())
        else:
            cursor.register(name, source.dataset)

    def batches(self, expr: 'ir.Table', batch_size: int) -> Iterator['pa.RecordBatch']:
        import ibis

        sql = ibis.to_sql(expr, dialect='duckdb')
        taken = self._take(table_names(expr))
        try:
            yield from taken[0].sql(sql).to_arrow_reader(batch_size)
        finally:
            with self._lock:
                self._idle.append(taken)

    def close(self) -> None:
        with self._lock:
            for cursor, _ in self._idle:
                cursor.close()
            self._idle.clear()
        self._db.close()


def table_names(expr: 'ir.Expr') -> list[str]:
    """The names of the (unbound) tables an expression reads."""
    import ibis.expr.operations as ops

    return sorted({op.name for op in expr.op().find(ops.UnboundTable)})


#: engine name -> factory taking an optional session (a DuckDB connection, a ``SparkSession``)
ENGINES: dict[str, Callable[[Any], Engine]] = {'duckdb': DuckDBEngine}


def connect_engine(name: str, session: Any = None) -> Engine:
    """The engine ``name`` (on ``session`` where given: a DuckDB connection, a ``SparkSession``)."""
    from superduper.base.exceptions import ConfigError

    factory = ENGINES.get(name)
    if factory is None:
        raise ConfigError(f'unknown engine {name!r}; known: {", ".join(sorted(ENGINES))}')
    return factory(session)
