"""The engines that run queries over a folder's tables and over in-memory DataFrames: DuckDB, Polars, DataFusion
and PySpark, behind one small interface.

Queries are ibis expressions over unbound tables (``ibis.table(schema, name)``), built once by the lake backend
whatever the engine: ibis compiles them to each engine's SQL (sqlglot) or, for Polars, to a lazy frame, so no query
is translated by hand per engine. An engine only registers the current data of each table and runs a compiled
expression, streaming Arrow record batches. (ibis's own backend objects are not used to run queries: ibis 12 calls
APIs DuckDB 2 removed, and it cannot register a table's new version in place.)
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

from superduper.base.exceptions import ConfigError, MissingDependency, UnknownTable

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
        """The rows of ``expr`` (over tables registered here), at most ``batch_size`` per batch, typed as ibis's
        schema of ``expr`` in Arrow."""

    def scalar(self, expr: 'ir.Scalar') -> Any:
        """The value of a scalar expression (``table.count()``, ``table.x.max()``) as a Python object."""

    def close(self) -> None: ...


class DuckDBEngine:
    """DuckDB in process. A query runs on a cursor of a pool, one cursor per query running (a read may be open while
    another runs: a backfill reads keys while counting), each with the tables registered on it (DuckDB
    registrations belong to one connection); Python objects are never scanned by name."""

    name = 'duckdb'

    def __init__(self, session: Any = None):
        import duckdb

        self._owned = session is None  # a connection given is the caller's to close
        self._db = duckdb.connect() if session is None else session
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
        """Register ``source`` as ``name`` on one cursor, in place of what was there: a temporary view (of this
        connection only) over the table's Parquet files, or the Arrow dataset."""
        quoted = '"' + name.replace('"', '""') + '"'
        cursor.unregister(name)
        cursor.execute(f'DROP VIEW IF EXISTS {quoted}')
        if source.files:  # DuckDB's own Parquet reader: parallel, with filters pushed into the files
            files = '[' + ', '.join("'" + f.replace("'", "''") + "'" for f in source.files) + ']'
            cursor.execute(f'CREATE TEMP VIEW {quoted} AS SELECT * FROM read_parquet({files}, union_by_name = true)')
            columns = [row[0] for row in cursor.execute(f'DESCRIBE {quoted}').fetchall()]
            if set(columns) >= set(source.dataset.schema.names):
                return
            cursor.execute(f'DROP VIEW {quoted}')  # files written before a column was added lack it
        if source.files is not None and not source.files:  # no file yet (an empty table)
            cursor.register(name, source.dataset.schema.empty_table())
        else:
            cursor.register(name, source.dataset)

    def batches(self, expr: 'ir.Table', batch_size: int) -> Iterator['pa.RecordBatch']:
        import ibis

        sql = ibis.to_sql(expr, dialect='duckdb')
        taken = self._take(table_names(expr))
        try:
            yield from conform(taken[0].sql(sql).to_arrow_reader(batch_size), expr, batch_size)
        finally:
            with self._lock:
                self._idle.append(taken)

    def scalar(self, expr: 'ir.Scalar') -> Any:
        return first_value(self.batches(expr.as_table(), 1))

    def close(self) -> None:
        with self._lock:
            for cursor, _ in self._idle:
                cursor.close()
            self._idle.clear()
        if self._owned:
            self._db.close()


class PolarsEngine:
    """Polars: each table is a LazyFrame, Polars's own Parquet scan where the table's files are known (twice as fast
    as scanning the Arrow dataset on a 1M-row table), the dataset's scan otherwise; ibis compiles each query to a
    LazyFrame over them, collected in streaming batches. Polars has no session: ``session`` is ignored."""

    name = 'polars'

    def __init__(self, session: Any = None):
        import polars  # noqa: F401  (a missing package fails here, not at the first query)

        self._frames: dict[str, Any] = {}
        self._sources: dict[str, TableSource] = {}  # what each frame was made from
        self._lock = threading.Lock()

    def register(self, source: TableSource) -> None:
        import polars as pl

        with self._lock:
            if self._sources.get(source.name) is source:
                return
        if source.files:  # files written before a column was added lack it: it reads as nulls
            schema = pl.from_arrow(source.dataset.schema.empty_table()).schema
            frame = pl.scan_parquet(list(source.files), schema=schema, missing_columns='insert')
        else:
            frame = pl.scan_pyarrow_dataset(source.dataset)
        with self._lock:
            self._frames[source.name] = frame
            self._sources[source.name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            self._frames.pop(name, None)
            self._sources.pop(name, None)

    def _compile(self, expr: 'ir.Expr') -> Any:
        import ibis

        names = table_names(expr)
        with self._lock:
            missing = [n for n in names if n not in self._frames]
            frames = {n: self._frames[n] for n in names if n in self._frames}
        if missing:
            raise UnknownTable(f'no table {missing[0]!r} is registered on the polars engine')
        # a backend per query, used only as a compiler: ibis binds an expression's unbound tables to the backend
        # compiling it and looks them up there by name, so it must hold exactly this query's current frames
        return ibis.polars.connect(tables=frames).compile(expr)

    def batches(self, expr: 'ir.Table', batch_size: int) -> Iterator['pa.RecordBatch']:
        frames = self._compile(expr).collect_batches(chunk_size=batch_size)
        arrow = (batch for frame in frames for batch in frame.to_arrow().to_batches())
        yield from conform(arrow, expr, batch_size)

    def scalar(self, expr: 'ir.Scalar') -> Any:
        return first_value(self.batches(expr.as_table(), 1))

    def close(self) -> None:
        with self._lock:
            self._frames.clear()


class DataFusionEngine:
    """DataFusion in process: one ``SessionContext`` holds each table, as a view over its Parquet files read by
    DataFusion itself where they are known (the Arrow types a writer recorded in a file, such as string views, are
    not used: a filter pushed into an Arrow dataset would compare them with plain strings and fail), else as an
    Arrow dataset; ibis compiles queries to DataFusion's SQL, whose results stream. The context may be queried from several threads at once (its catalog is
    behind Rust locks); replacing a table is two calls (deregister, register), so replacing and planning a query (when
    the plan takes its tables from the catalog) are serialised, while running the plan is not."""

    name = 'datafusion'

    def __init__(self, session: Any = None):
        import datafusion

        # plain strings, not views, as the other engines and the tables' schemas have them
        config = datafusion.SessionConfig().set('datafusion.sql_parser.map_string_types_to_utf8view', 'false')
        config = config.set('datafusion.execution.parquet.schema_force_view_types', 'false')
        self._ctx = session if session is not None else datafusion.SessionContext(config)
        self._lock = threading.Lock()
        self._sources: dict[str, TableSource] = {}  # what each registered table was made from

    def register(self, source: TableSource) -> None:
        with self._lock:
            if self._sources.get(source.name) is source:
                return
        frame = self._files(source) if source.files else None
        with self._lock:
            self._sources[source.name] = source
            self._ctx.deregister_table(source.name)
            if frame is not None:
                self._ctx.register_view(source.name, frame)
            else:
                self._ctx.register_dataset(source.name, source.dataset)

    def _files(self, source: TableSource) -> Any:
        """The table's Parquet files as one DataFusion frame of the table's schema."""
        schema = source.dataset.schema
        frames = [self._ctx.read_parquet(path, schema=schema) for path in source.files or ()]
        frame = frames[0]
        for other in frames[1:]:
            frame = frame.union(other)
        return frame

    def unregister(self, name: str) -> None:
        with self._lock:
            self._ctx.deregister_table(name)
            self._sources.pop(name, None)

    def batches(self, expr: 'ir.Table', batch_size: int) -> Iterator['pa.RecordBatch']:
        import ibis

        sql = ibis.to_sql(expr, dialect='datafusion')
        with self._lock:
            frame = self._ctx.sql(sql)
        stream = (batch.to_pyarrow() for batch in frame.execute_stream())
        yield from conform(stream, expr, batch_size)

    def scalar(self, expr: 'ir.Scalar') -> Any:
        return first_value(self.batches(expr.as_table(), 1))

    def close(self) -> None:
        with self._lock:
            for name in self._ctx.catalog().schema().names():
                self._ctx.deregister_table(name)


class PySparkEngine:
    """Spark, on a ``SparkSession`` given as ``session`` or a local one it starts (and alone stops). Tables are temp
    views of a session of the engine's own (``newSession``: same SparkContext, separate views, so two engines on one
    Spark do not see each other's tables): Spark reads a table's Parquet files itself where they are known, and gets
    the Arrow data otherwise. Queries are compiled by ibis to Spark SQL; results come back as Arrow."""

    name = 'pyspark'

    def __init__(self, session: Any = None):
        import pyspark  # noqa: F401  (a missing package fails here)

        self._root, self._owned = (session, False) if session is not None else _local_spark()
        self._spark = self._root.newSession()
        self._sources: dict[str, TableSource] = {}  # what each temp view was made from
        self._spark.conf.set('spark.sql.session.timeZone', 'UTC')
        self._spark.conf.set('spark.sql.execution.arrow.pyspark.enabled', 'true')

    def register(self, source: TableSource) -> None:
        if self._sources.get(source.name) is source:
            return
        if source.files:  # files written before a column was added lack it: merged schemas read it as nulls
            frame = self._spark.read.option('mergeSchema', 'true').parquet(*source.files)
        else:
            frame = self._spark.createDataFrame(source.dataset.to_table())
        frame.createOrReplaceTempView(source.name)
        self._sources[source.name] = source

    def unregister(self, name: str) -> None:
        self._spark.catalog.dropTempView(name)
        self._sources.pop(name, None)

    def batches(self, expr: 'ir.Table', batch_size: int) -> Iterator['pa.RecordBatch']:
        # toArrow gathers the result on the driver: Spark has no Arrow stream to the client
        table = self._spark.sql(spark_sql(expr)).toArrow()
        yield from conform(table.to_batches(), expr, batch_size)

    def scalar(self, expr: 'ir.Scalar') -> Any:
        return first_value(self.batches(expr.as_table(), 1))

    def close(self) -> None:
        if self._owned:
            self._root.stop()


def _local_spark() -> tuple[Any, bool]:
    """A local Spark for this process, and whether it was started here (a Spark already running is reused)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    started = SparkContext._active_spark_context is None
    builder = SparkSession.builder.master('local[2]').appName('superduper-lake')
    for key, value in _SPARK_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel('ERROR')
    return spark, started


_SPARK_CONF = {
    'spark.ui.enabled': 'false',
    'spark.ui.showConsoleProgress': 'false',
    'spark.sql.shuffle.partitions': '2',  # the default 200 makes every small join or sort 200 tasks
    'spark.sql.execution.arrow.pyspark.enabled': 'true',
    'spark.driver.memory': '1g',
    'spark.sql.session.timeZone': 'UTC',
}


def spark_sql(expr: 'ir.Expr') -> str:
    """Spark SQL for ``expr``, with SQL's null tests: ibis's PySpark compiler counts NaN as null in ``isnull`` and
    ``notnull``, which no other engine does."""
    return str(_spark_compiler().to_sqlglot(expr.unbind()).sql(dialect='spark'))


@functools.cache
def _spark_compiler() -> Any:
    import ibis
    from ibis.backends.sql.compilers.base import SQLGlotCompiler
    from ibis.backends.sql.compilers.pyspark import PySparkCompiler

    ibis.pyspark  # noqa: B018  (loading the backend registers the options its compiler reads)

    class Compiler(PySparkCompiler):
        visit_IsNull = SQLGlotCompiler.visit_IsNull
        visit_NotNull = SQLGlotCompiler.visit_NotNull

    return Compiler()


def conform(batches: Iterable['pa.RecordBatch'], expr: 'ir.Table', batch_size: int) -> Iterator['pa.RecordBatch']:
    """``batches`` typed as ibis's Arrow schema of ``expr`` (engines differ: string views, large lists, Spark's
    UTC timestamps), in batches of ``batch_size`` rows (the last one fewer), whatever sizes the engine made."""
    import pyarrow as pa

    schema = expr.schema().to_pyarrow()
    held: list = []  # small batches waiting to fill one
    count = 0
    for batch in batches:
        if batch.schema != schema:
            columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(batch.columns, schema)]
            batch = pa.RecordBatch.from_arrays(columns, schema=schema)
        while batch.num_rows:
            take = batch.slice(0, batch_size - count)
            batch = batch.slice(take.num_rows)
            held.append(take)
            count += take.num_rows
            if count == batch_size:
                yield _joined(held, schema)
                held, count = [], 0
    if count:
        yield _joined(held, schema)


def _joined(parts: list, schema: 'pa.Schema') -> 'pa.RecordBatch':
    import pyarrow as pa

    return parts[0] if len(parts) == 1 else pa.Table.from_batches(parts, schema=schema).combine_chunks().to_batches()[0]


def first_value(batches: Iterable['pa.RecordBatch']) -> Any:
    """The first column's value in the first row of ``batches`` (None where there are no rows)."""
    for batch in batches:
        if batch.num_rows:
            return batch.column(0)[0].as_py()
    return None


def table_names(expr: 'ir.Expr') -> list[str]:
    """The names of the (unbound) tables an expression reads."""
    import ibis.expr.operations as ops

    return sorted({op.name for op in expr.op().find(ops.UnboundTable)})


#: engine name -> factory taking an optional session (a DuckDB connection, a ``SparkSession``)
ENGINES: dict[str, Callable[[Any], Engine]] = {
    'duckdb': DuckDBEngine,
    'polars': PolarsEngine,
    'datafusion': DataFusionEngine,
    'pyspark': PySparkEngine,
}

#: engine name -> (the package it needs, the extra installing it)
_PACKAGES = {
    'duckdb': ('duckdb', 'lake'),
    'polars': ('polars', 'lake-polars'),
    'datafusion': ('datafusion', 'lake-datafusion'),
    'pyspark': ('pyspark', 'pyspark'),
}


def connect_engine(name: str, session: Any = None) -> Engine:
    """The engine called ``name``, on ``session`` (a DuckDB connection, a DataFusion ``SessionContext``, a
    ``SparkSession``) where given."""
    try:
        factory = ENGINES[name]
    except KeyError:
        known = ', '.join(sorted(ENGINES))
        raise ConfigError(f'unknown lake engine {name!r}: the engines are {known}') from None
    try:
        return factory(session)
    except ImportError as error:
        package, extra = _PACKAGES.get(name, (name, None))
        hint = f"pip install 'superduper[{extra}]'" if extra else f'pip install {package}'
        missing = error.name or package
        raise MissingDependency(f'the {name} lake engine needs {missing}, which is not installed: {hint}') from error
