"""Quantised vector indexes (``VectorIndex(..., quantization='int8' | 'binary')``): recall against brute force, with
and without filters, on every backend; saved and reopened; the memory of a process searching one."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from superduper import ObjectModel, Table, VectorIndex
from superduper.base.exceptions import ComponentError
from superduper.vector_search.exact import ExactSearcher
from superduper.vector_search.quantized import QuantizedSearcher

DIM = 32
ROWS = 2000
rng = np.random.default_rng(11)
CENTRES = rng.normal(size=(40, DIM)).astype(np.float32)
VECTORS = (CENTRES[rng.integers(0, len(CENTRES), ROWS)] + 0.6 * rng.normal(size=(ROWS, DIM))).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
QUERIES = VECTORS[rng.integers(0, ROWS, 20)] + 0.05 * rng.normal(size=(20, DIM)).astype(np.float32)


def lookup(n: int) -> np.ndarray:
    return VECTORS[n]


def truth(query: np.ndarray, allowed: np.ndarray, n: int = 10) -> list[int]:
    scores = VECTORS[allowed] @ (query / np.linalg.norm(query))
    return allowed[np.argsort(-scores, kind='stable')[:n]].tolist()


def recall(got: list, expected: list) -> float:
    return len(set(got) & set(expected)) / len(expected)


@pytest.mark.backends('all', 'pgvector')
@pytest.mark.parametrize('quantization', ['int8', 'binary'])
def test_quantised_recall_against_brute_force_with_and_without_filters(db, quantization):
    """A few thousand clustered vectors: recall@10 >= 0.95 after rescoring (int8 answers exactly), filters kept
    (10% of the rows), the plan names the quantised searcher; vectors stored natively stay in process."""
    db.apply(Table('points', fields={'n': 'int', 'bucket': 'int'}, folds=False))
    db['points'].insert([{'id': str(i), 'n': i, 'bucket': i % 10} for i in range(ROWS)]).execute()
    listener = ObjectModel('lookup', object=lookup, datatype=f'vector[float32:{DIM}]').to_listener('points', key='n')
    db.apply(VectorIndex('pts', indexing_listener=listener, quantization=quantization))
    t = db['points']
    ids = np.arange(ROWS)
    plain, filtered = [], []
    for q in QUERIES:
        cursor = t.like(q, vector_index='pts', n=10).execute()
        got = [int(r['id']) for r in cursor]
        assert cursor.plan['searcher'] == quantization and 'quantised' in cursor.plan['strategy']
        plain.append(recall(got, truth(q, ids)))
        if quantization == 'int8':
            assert got == truth(q, ids)
        got = [int(r['id']) for r in t.filter(t['bucket'] == 3).like(q, vector_index='pts', n=10).execute()]
        assert len(got) == 10 and all(i % 10 == 3 for i in got)
        filtered.append(recall(got, truth(q, ids[ids % 10 == 3])))
    assert np.mean(plain) >= 0.95 and np.mean(filtered) >= 0.95, (plain, filtered)


@pytest.mark.backends('sqlite')
def test_a_quantised_index_follows_writes_and_reopens_from_its_saved_state(db_uri, tmp_path):
    """New and deleted rows are followed; another process opening the index reads the saved codes and vectors."""
    from superduper import superduper

    artifacts = f'filesystem://{tmp_path}/artifacts'
    db = superduper(db_uri, artifact_store=artifacts, progress=False)
    db.apply(Table('points', fields={'n': 'int'}, folds=False))
    db['points'].insert([{'id': str(i), 'n': i} for i in range(500)]).execute()
    listener = ObjectModel('lookup', object=lookup, datatype=f'vector[float32:{DIM}]').to_listener('points', key='n')
    db.apply(VectorIndex('pts', indexing_listener=listener, quantization='int8'))
    t = db['points']
    t.insert([{'id': str(i), 'n': i} for i in range(500, 600)]).execute()
    t.filter(t['n'] == 550).delete().execute()
    alive = np.array([i for i in range(600) if i != 550])
    q = VECTORS[550]
    assert [int(r['id']) for r in t.like(q, vector_index='pts', n=5).execute()] == truth(q, alive, 5)
    db.vector_indexes.save(db.vector_indexes.get('pts'))
    db.close()
    other = superduper(db_uri, artifact_store=artifacts, progress=False)
    try:
        loaded = other.vector_indexes.get('pts')
        assert loaded.searcher.kind == 'int8' and len(loaded.searcher) == 599
        assert [int(r['id']) for r in other['points'].like(q, vector_index='pts', n=5).execute()] == truth(q, alive, 5)
    finally:
        other.close()


def test_quantization_is_refused_where_it_cannot_apply():
    listener = ObjectModel('lookup', object=lookup).to_listener('points', key='n')
    with pytest.raises(ComponentError, match='quantization'):
        VectorIndex('pts', indexing_listener=listener, quantization='int4')
    with pytest.raises(ComponentError, match="searcher='hnsw'"):
        VectorIndex('pts', indexing_listener=listener, quantization='int8', searcher='hnsw')
    assert 'quantization' not in dict(VectorIndex('pts', indexing_listener=listener).arguments())


@pytest.mark.parametrize('measure', ['cosine', 'dot', 'l2'])
def test_int8_is_exact_and_binary_near_for_every_measure_and_after_saving(tmp_path, measure):
    exact = ExactSearcher(DIM, measure)
    exact.upsert(list(range(ROWS)), VECTORS * 3)
    for kind in ('int8', 'binary'):
        searcher = QuantizedSearcher(DIM, measure, kind)
        searcher.upsert(list(range(ROWS)), VECTORS * 3)
        searcher.remove([0, 1, 2])
        exact.remove([0, 1, 2])
        folder = tmp_path / f'{kind}-{measure}'
        folder.mkdir()
        searcher.save(str(folder))
        again = QuantizedSearcher(DIM, measure, kind)
        again.load(str(folder))
        for s in (searcher, again):
            recalls = []
            for q in QUERIES:
                got, expected = [i for i, _ in s.search(q, 10)], [i for i, _ in exact.search(q, 10)]
                if kind == 'int8':
                    assert got == expected
                recalls.append(recall(got, expected))
            assert np.mean(recalls) >= 0.95


SEARCHING = '''
import sys, numpy as np
def rss(): return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])
folder, kind = sys.argv[1], sys.argv[2]
queries = np.load(folder + '/../queries.npy')
from superduper.vector_search.exact import ExactSearcher
from superduper.vector_search.hnsw import HnswSearcher
from superduper.vector_search.quantized import QuantizedSearcher
np.ones((256, 256), dtype=np.float32) @ np.ones((256, 256), dtype=np.float32)  # BLAS's own buffers: not the index's
base = rss()
searcher = {'hnsw': lambda: HnswSearcher(queries.shape[1]), 'exact': lambda: ExactSearcher(queries.shape[1])}.get(
    kind, lambda: QuantizedSearcher(queries.shape[1], 'cosine', kind))()
searcher.load(folder)
some = searcher.ids[::10]
for q in queries:
    searcher.search(q, 10)
    searcher.search(q, 10, candidates=some[:500])
print(rss() - base)
'''


def test_a_process_searching_a_quantised_index_holds_a_fraction_of_float32(tmp_path):
    """RSS grown by opening and searching a saved index of 20,000 x 384 vectors (the rescoring reads included):
    int8 about 1/4 of the float32 HNSW index (what ``searcher='auto'`` builds at this size), binary <= 1/5; both
    well under the float32 exact index (generous bounds: the ids cost the same in each)."""
    from superduper.vector_search.hnsw import HnswSearcher

    dim, rows = 384, 20_000
    data = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    ids = [f'row-{i}' for i in range(rows)]
    searchers = {'hnsw': HnswSearcher(dim, ef_construction=16), 'exact': ExactSearcher(dim),
                 'int8': QuantizedSearcher(dim, 'cosine', 'int8'), 'binary': QuantizedSearcher(dim, 'cosine', 'binary')}
    for kind, searcher in searchers.items():
        searcher.upsert(ids, data)
        (tmp_path / kind).mkdir()
        searcher.save(str(tmp_path / kind))
    del searchers
    np.save(tmp_path / 'queries.npy', data[:30])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([os.getcwd(), os.environ.get('PYTHONPATH', '')])}
    grown = {kind: int(subprocess.run([sys.executable, '-c', SEARCHING, str(tmp_path / kind), kind], check=True,
                                      env=env, capture_output=True, text=True).stdout)
             for kind in ('hnsw', 'exact', 'int8', 'binary')}
    assert grown['exact'] > dim * rows * 4 // 1024  # the float32 vectors at least (KB)
    # int8 codes are a quarter of the vectors; the ids (the same in every searcher) come on top
    assert grown['int8'] <= 0.3 * grown['hnsw'] and grown['int8'] <= 0.4 * grown['exact'], grown
    assert grown['binary'] <= grown['hnsw'] / 5, grown
