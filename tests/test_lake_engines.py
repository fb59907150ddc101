"""The lake engines (DuckDB, Polars, DataFusion, PySpark) give the same rows, types and batches for the same ibis
expressions over unbound tables."""

import datetime
import importlib.util
import math
import sys
import threading

import ibis
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from superduper.backends.lake.engines import ENGINES, TableSource, connect_engine
from superduper.base.exceptions import ConfigError, MissingDependency

HAS_PYSPARK = importlib.util.find_spec('pyspark') is not None

ENGINE_NAMES = [
    'duckdb',
    'polars',
    'datafusion',
    pytest.param(
        'pyspark',
        marks=[
            pytest.mark.pyspark,
            pytest.mark.skipif(not HAS_PYSPARK, reason="pyspark is not installed: pip install 'superduper[pyspark]'"),
        ],
    ),
]

N = 10
DOCS = pa.table(
    {
        'id': pa.array(range(N), pa.int64()),
        'x': pa.array([0.5 * i if i % 4 else None for i in range(N)], pa.float64()),
        's': pa.array([f's{i}' if i != 3 else None for i in range(N)]),
        'b': pa.array([bytes([i, 0, 255]) for i in range(N)], pa.binary()),
        'flag': pa.array([i % 2 == 0 for i in range(N)]),
        'ts': pa.array([datetime.datetime(2024, 1, 1 + i, 12, 30, 0, 123456) for i in range(N)], pa.timestamp('us')),
        'v': pa.array([[float(i), 0.5] if i != 5 else None for i in range(N)], pa.list_(pa.float32())),
    }
)
# a NaN besides the nulls: NaN is a value, not a null, on every engine
DOCS = DOCS.set_column(1, 'x', pa.array([math.nan if i == 2 else v for i, v in enumerate(DOCS['x'].to_pylist())]))
LABELS = pa.table({'id': pa.array([1, 2, 7], pa.int64()), 'label': ['one', 'two', 'seven']})

docs = ibis.table(ibis.Schema.from_pyarrow(DOCS.schema), name='docs')
labels = ibis.table(ibis.Schema.from_pyarrow(LABELS.schema), name='labels')


@pytest.fixture(scope='session')
def spark():
    """One local Spark for the whole test session (it takes seconds to start)."""
    from superduper.backends.lake.engines import _local_spark

    session, started = _local_spark()
    yield session
    if started:
        session.stop()


@pytest.fixture(params=ENGINE_NAMES)
def engine(request):
    session = request.getfixturevalue('spark') if request.param == 'pyspark' else None
    engine = connect_engine(request.param, session)
    yield engine
    engine.close()


def arrow_source(name: str, table: pa.Table) -> TableSource:
    return TableSource(name, pads.dataset(table))


def parquet_source(name: str, table: pa.Table, folder) -> TableSource:
    """``table`` as two Parquet files (an engine reading files must read both)."""
    folder.mkdir(parents=True, exist_ok=True)
    half = table.num_rows // 2
    files = []
    for i, part in enumerate([table.slice(0, half), table.slice(half)]):
        path = str(folder / f'part-{i}.parquet')
        pq.write_table(part, path)
        files.append(path)
    return TableSource(name, pads.dataset(files), tuple(files))


@pytest.fixture(params=['arrow', 'parquet'])
def source_kind(request):
    return request.param


def register(engine, kind: str, name: str, table: pa.Table, folder) -> None:
    engine.register(parquet_source(name, table, folder / name) if kind == 'parquet' else arrow_source(name, table))


def result(engine, expr, batch_size: int = 1000) -> pa.Table:
    return pa.Table.from_batches(list(engine.batches(expr, batch_size)), schema=expr.schema().to_pyarrow())


def ids(engine, expr) -> list[int]:
    return sorted(result(engine, expr)['id'].to_pylist())


def expected_ids(keep) -> list[int]:
    return [row['id'] for row in DOCS.to_pylist() if keep(row)]


FILTERS = {
    'eq': (lambda t: t.id == 3, lambda r: r['id'] == 3),
    'ne': (lambda t: t.s != 's4', lambda r: r['s'] is not None and r['s'] != 's4'),
    'lt': (lambda t: t.x < 2.0, lambda r: r['x'] is not None and r['x'] < 2.0),
    'ge': (lambda t: t.ts >= datetime.datetime(2024, 1, 5), lambda r: r['ts'] >= datetime.datetime(2024, 1, 5)),
    'isin': (lambda t: t.id.isin([1, 5, 9, 42]), lambda r: r['id'] in (1, 5, 9)),
    'isnull': (lambda t: t.x.isnull(), lambda r: r['x'] is None),
    'notnull': (lambda t: t.x.notnull(), lambda r: r['x'] is not None),
    'and_or_not': (
        lambda t: ((t.id > 2) & t.flag) | ~(t.id < 8),
        lambda r: (r['id'] > 2 and r['flag']) or not r['id'] < 8,
    ),
    'bool': (lambda t: t.flag, lambda r: r['flag']),
}


@pytest.mark.parametrize('case', FILTERS)
def test_filters(engine, source_kind, tmp_path, case):
    register(engine, source_kind, 'docs', DOCS, tmp_path)
    predicate, keep = FILTERS[case]
    assert ids(engine, docs.filter(predicate(docs))) == expected_ids(keep)


def test_select_columns(engine, source_kind, tmp_path):
    register(engine, source_kind, 'docs', DOCS, tmp_path)
    table = result(engine, docs.select('s', 'id').order_by('id'))
    assert table.column_names == ['s', 'id']
    assert table.to_pydict() == {'s': DOCS['s'].to_pylist(), 'id': DOCS['id'].to_pylist()}


def test_left_join(engine, source_kind, tmp_path):
    register(engine, source_kind, 'docs', DOCS, tmp_path)
    register(engine, source_kind, 'labels', LABELS, tmp_path)
    joined = docs.left_join(labels, docs.id == labels.id).select(docs.id, labels.label).order_by('id')
    names = dict(zip(LABELS['id'].to_pylist(), LABELS['label'].to_pylist()))
    assert result(engine, joined).to_pylist() == [{'id': i, 'label': names.get(i)} for i in range(N)]


def test_order_by_limit_offset(engine):
    engine.register(arrow_source('docs', DOCS))
    expr = docs.order_by(ibis.desc('id')).limit(3, offset=2).select('id')
    assert result(engine, expr)['id'].to_pylist() == [7, 6, 5]


def test_count_is_a_scalar(engine, source_kind, tmp_path):
    register(engine, source_kind, 'docs', DOCS, tmp_path)
    assert engine.scalar(docs.count()) == N
    assert engine.scalar(docs.filter(docs.flag).count()) == N // 2
    assert engine.scalar(docs.filter(docs.id > 100).count()) == 0
    assert engine.scalar(docs.id.max()) == N - 1


def test_batches_are_at_most_batch_size(engine, source_kind, tmp_path):
    big = pa.table({'id': pa.array(range(2500), pa.int64())})
    register(engine, source_kind, 'big', big, tmp_path)
    expr = ibis.table(ibis.Schema.from_pyarrow(big.schema), name='big')
    for batch_size in (1, 7, 1000):
        batches = list(engine.batches(expr, batch_size))
        assert all(0 < b.num_rows <= batch_size for b in batches)
        assert sum(b.num_rows for b in batches) == 2500
    assert list(engine.batches(expr.filter(expr.id < 0), 10)) == []


def test_registering_again_replaces_the_data(engine, source_kind, tmp_path):
    register(engine, source_kind, 'docs', DOCS, tmp_path / 'v1')
    assert engine.scalar(docs.count()) == N
    register(engine, source_kind, 'docs', DOCS.slice(0, 4), tmp_path / 'v2')
    assert ids(engine, docs) == [0, 1, 2, 3]
    engine.unregister('docs')
    engine.register(arrow_source('docs', DOCS.slice(5)))
    assert ids(engine, docs) == list(range(5, N))


def test_types_round_trip(engine, source_kind, tmp_path):
    register(engine, source_kind, 'docs', DOCS, tmp_path)
    table = result(engine, docs.order_by('id'))
    assert table.schema == docs.schema().to_pyarrow()
    assert table.schema.field('ts').type == pa.timestamp('us')  # no time zone added (Spark's are UTC)
    for name in DOCS.column_names:
        got, want = table[name].to_pylist(), DOCS[name].to_pylist()
        assert [_nan_as_marker(v) for v in got] == [_nan_as_marker(v) for v in want], name


def _nan_as_marker(value):
    return 'NaN' if isinstance(value, float) and math.isnan(value) else value


def test_concurrent_queries(engine):
    engine.register(arrow_source('docs', DOCS))
    engine.register(arrow_source('labels', LABELS))
    failures: list[str] = []

    def query(thread: int) -> None:
        try:
            for i in range(5):
                bound = (thread + i) % N
                got = ids(engine, docs.filter(docs.id >= bound))
                if got != list(range(bound, N)):
                    failures.append(f'thread {thread}: {got}')
                if engine.scalar(labels.count()) != 3:
                    failures.append(f'thread {thread}: count')
        except Exception as error:  # a failure in a thread must fail the test
            failures.append(repr(error))

    threads = [threading.Thread(target=query, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_unknown_engine_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"'sqlite'.*datafusion, duckdb, polars, pyspark"):
        connect_engine('sqlite')


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'polars', None)  # import polars now raises ImportError
    with pytest.raises(MissingDependency, match=r"polars.*pip install 'superduper\[lake-polars\]'"):
        connect_engine('polars')


def test_every_engine_is_tested():
    assert sorted(ENGINES) == sorted(p if isinstance(p, str) else p.values[0] for p in ENGINE_NAMES)


@pytest.mark.pyspark
@pytest.mark.skipif(not HAS_PYSPARK, reason="pyspark is not installed: pip install 'superduper[pyspark]'")
def test_pyspark_engine_leaves_a_given_session_running(spark):
    first, second = connect_engine('pyspark', spark), connect_engine('pyspark', spark)
    first.register(arrow_source('docs', DOCS))
    with pytest.raises(Exception, match='docs'):  # each engine's tables are its own
        list(second.batches(docs, 10))
    first.close()
    assert spark.range(3).count() == 3


def test_an_unregistered_table_is_named_in_the_error(engine):
    engine.register(arrow_source('docs', DOCS))
    nope = ibis.table(docs.schema(), name='nope')
    with pytest.raises(Exception, match='nope'):
        list(engine.batches(nope, 10))
