"""Query results as pandas and polars DataFrames, whole or a batch at a time, on every backend."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pandas as pd
import polars as pl
import pytest

from superduper import Cursor, ObjectModel, Table, VectorIndex
from superduper.base.exceptions import MissingDependency

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')

ROWS = [{'txt': f'item {i}', 'n': i, 'price': i * 1.5} for i in range(7)]


@pytest.fixture
def items(db):
    db.apply(Table('items', fields={'txt': 'str', 'n': 'int', 'price': 'float'}, folds=False))
    ids = db['items'].insert(ROWS).execute()
    return db['items'], ids


def embed(text: str) -> np.ndarray:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=8).astype(np.float32)


def test_select_as_frames_equals_the_rows(items, pk):
    t, _ = items
    rows = t.select().order_by('n').execute().tolist()
    frame = t.select().order_by('n').execute().to_pandas()
    assert list(frame.columns) == list(rows[0])
    assert set(frame.columns) == {pk, 'txt', 'n', 'price'}
    assert frame.to_dict('records') == rows
    assert t.select().order_by('n').execute().to_polars().to_dicts() == rows


def test_columns_in_the_select_order(items):
    t, _ = items
    query = t.filter(t['n'] >= 4).select('price', 'txt').order_by('n')
    expected = [{'price': r['price'], 'txt': r['txt']} for r in ROWS if r['n'] >= 4]
    frame = query.execute().to_pandas()
    assert list(frame.columns) == ['price', 'txt'] and frame.to_dict('records') == expected
    frame = query.execute().to_polars()
    assert frame.columns == ['price', 'txt'] and frame.to_dicts() == expected
    assert frame.schema['price'] == pl.Float64 and frame.schema['txt'] == pl.String


def test_empty_result_has_the_columns(items):
    t, _ = items
    query = t.filter(t['n'] > 100).select('txt', 'n')
    frame = query.execute().to_pandas()
    assert list(frame.columns) == ['txt', 'n'] and len(frame) == 0
    frame = query.execute().to_polars()
    assert frame.columns == ['txt', 'n'] and frame.height == 0
    assert list(query.execute().pandas_batches()) == [] and list(query.execute().polars_batches()) == []


def test_batches_are_the_database_batches(db, items):
    t, _ = items
    db.cfg.read_batch_size = 2
    query = t.select('txt', 'n').order_by('n')
    frames = list(query.execute().pandas_batches())
    assert [len(f) for f in frames] == [2, 2, 2, 1]
    pd.testing.assert_frame_equal(pd.concat(frames), query.execute().to_pandas())
    assert pd.concat(frames).to_dict('records') == [{'txt': r['txt'], 'n': r['n']} for r in ROWS]
    frames = list(query.execute().polars_batches())
    assert [f.height for f in frames] == [2, 2, 2, 1]
    assert pl.concat(frames).equals(query.execute().to_polars())


def test_frames_take_the_rows_left(db, items):
    t, _ = items
    db.cfg.read_batch_size = 3
    cursor = t.select('n').order_by('n').execute()
    assert next(cursor) == {'n': 0}
    frames = list(cursor.pandas_batches())
    assert [f['n'].tolist() for f in frames] == [[1, 2], [3, 4, 5], [6]]
    assert [list(f.index) for f in frames] == [[0, 1], [2, 3, 4], [5]]  # indexed on from each other


def test_vectors_in_frames(db):
    db.apply(Table('vecs', fields={'txt': 'str', 'v': 'vector[float32:3]'}, folds=False))
    vectors = [np.array([i, i + 1, i + 2], dtype=np.float32) for i in range(3)]
    db['vecs'].insert([{'txt': str(i), 'v': v} for i, v in enumerate(vectors)]).execute()
    frame = db['vecs'].select('txt', 'v').order_by('txt').execute().to_pandas()
    assert frame['v'].dtype == object and all(isinstance(v, np.ndarray) for v in frame['v'])
    assert all(np.array_equal(a, b) for a, b in zip(frame['v'], vectors))
    frame = db['vecs'].select('txt', 'v').order_by('txt').execute().to_polars()
    assert frame['v'].to_list() == [v.tolist() for v in vectors]


def test_listener_outputs_are_columns(db, items):
    t, _ = items
    listener = db.apply(ObjectModel('upper', object=lambda x: x.upper()).to_listener(select=t.select(), key='txt'))
    query = t.filter(t['n'] < 3).select('txt').outputs(listener.predict_id).order_by('n')
    expected = [{'txt': f'item {i}', listener.outputs: f'ITEM {i}'} for i in range(3)]
    frame = query.execute().to_pandas()
    assert list(frame.columns) == ['txt', listener.outputs] and frame.to_dict('records') == expected
    assert query.execute().to_polars().to_dicts() == expected


def test_vector_search_frames_carry_the_score(db, items, pk):
    t, _ = items
    db.apply(VectorIndex('idx', indexing_listener=ObjectModel('emb', object=embed).to_listener(t.select(), key='txt')))
    query = t.like({'txt': 'item 3'}, vector_index='idx', n=3).select('txt', 'n')
    rows = query.execute().tolist()
    frame = query.execute().to_pandas()
    assert list(frame.columns) == ['txt', 'n', '_score'] and frame.to_dict('records') == rows
    assert frame['txt'][0] == 'item 3' and frame['_score'][0] == pytest.approx(1.0, abs=1e-5)
    assert list(frame['_score']) == sorted(frame['_score'], reverse=True)
    assert query.execute().to_polars().to_dicts() == rows
    whole = t.like({'txt': 'item 3'}, vector_index='idx', n=2).execute().to_polars()
    assert whole.columns[-1] == '_score' and {pk, 'txt', 'n', 'price'} <= set(whole.columns)
    empty = t.filter(t['n'] > 100).like({'txt': 'item 3'}, vector_index='idx', n=2).select('txt').execute()
    assert list(empty.to_pandas().columns) == ['txt', '_score']


@pytest.mark.backends('any')
@pytest.mark.parametrize('package, method', [('polars', 'to_polars'), ('polars', 'polars_batches'),
                                             ('pandas', 'to_pandas'), ('pandas', 'pandas_batches')])
def test_a_missing_package_names_its_extra(items, monkeypatch, package, method):
    t, _ = items
    monkeypatch.setitem(sys.modules, package, None)  # an import of it fails as if it were not installed
    cursor = t.select('n').execute()
    with pytest.raises(MissingDependency, match=rf"pip install 'superduper\[{package}\]'"):
        getattr(cursor, method)()
    assert len(cursor.tolist()) == len(ROWS)  # nothing was taken from the cursor


def test_batches_are_fetched_as_frames_are_taken():
    fetched = []

    def batches():
        for i in range(3):
            fetched.append(i)
            yield [{'i': i, 'j': -i}]

    frames = Cursor(batches(), columns=['j', 'i']).polars_batches()
    assert fetched == []
    first = next(frames)
    assert fetched == [0] and first.columns == ['j', 'i']
    assert [f.to_dicts() for f in frames] == [[{'j': -1, 'i': 1}], [{'j': -2, 'i': 2}]]


def test_schemaless_rows_fill_what_they_lack():
    cursor = Cursor(iter([[{'a': 1}, {'a': 2, 'b': 'x'}], [{'c': np.zeros(2)}, {'c': None}]]))
    frame = cursor.to_pandas()
    assert list(frame.columns) == ['a', 'b', 'c'] and frame['b'].tolist()[1] == 'x'
    frame = Cursor(iter([[{'c': np.zeros(2)}, {'c': None}, {'c': object()}]])).to_polars()
    assert frame['c'].dtype == pl.Object
    frame = Cursor(iter([[{'c': np.zeros(2)}, {'c': None}]])).to_polars()
    assert frame['c'].to_list() == [[0.0, 0.0], None]
    frame = Cursor(iter([[{'c': np.zeros((2, 1))}, {'c': np.ones((2, 1))}]])).to_polars()  # 2-d: nested lists
    assert frame['c'].to_list() == [[[0.0], [0.0]], [[1.0], [1.0]]]
