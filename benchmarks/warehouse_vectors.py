"""Filtered vector search pushed into the warehouse engine against the in-process searchers, over the same data, in
the same run.

    python benchmarks/warehouse_vectors.py [--rows 50000] [--queries 100] [--backends chdb,duckdb]

Data: unit vectors of 384 dimensions drawn around 1,000 Gaussian centres (as in ``vector_search.py``), queries
drawn the same way, k = 10. Each row has a ``bucket`` (its number modulo 100); a filter ``bucket < b`` keeps 1%,
10% or 50% of the rows. Ground truth is exact (filtered) search with numpy.

One listener stores the vectors in the database (natively: ``Array(Float32)`` on ClickHouse, ``FLOAT[384]`` on
DuckDB); three vector indexes over the same listener are searched with the same query,
``t.like(vector, vector_index=..., n=10).filter(t['bucket'] < b).select().execute()`` (search plus fetching the
ten rows):

- ``native``: the search is one SQL query in the engine (distance over the outputs joined to the filtered rows,
  ``ORDER BY distance LIMIT 10``), exact;
- ``hnsw``: superduper's in-process HNSW index (what ``searcher='auto'`` picks without native vectors at this
  size), with a filter: exact over the matching ids when few match, else ANN candidates checked against the filter
  in the database;
- ``exact``: the in-process numpy matrix, with a filter: exact over the matching ids, or candidates checked.

For each: QPS (queries / wall time, one query at a time) and the median latency, and recall@10 against numpy.
The in-process indexes are built (read from the database) before the timing. The machine may be shared and
noisy: the script reports what it measures and never fails on a time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from superduper import ObjectModel, Table, VectorIndex, superduper

DIM = 384
URIS = {'chdb': 'chdb://{tmp}/bench.chdb', 'duckdb': 'duckdb://{tmp}/bench.duckdb'}
SHARES = (None, 0.01, 0.10, 0.50)
SEARCHERS = ('native', 'hnsw', 'exact')


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(got: list, truth: np.ndarray) -> float:
    return len(set(got) & set(truth.tolist())) / len(truth) if len(truth) else 1.0


def truth_for(vectors: np.ndarray, queries: np.ndarray, share: float | None) -> np.ndarray:
    rows = np.arange(len(vectors))
    allowed = rows if share is None else rows[rows % 100 < round(100 * share)]
    return allowed[np.argsort(-(queries @ vectors[allowed].T), axis=1)[:, :10]]


def run(name: str, uri: str, vectors: np.ndarray, queries: np.ndarray, tmp: str) -> None:
    db = superduper(uri, artifact_store=f'filesystem://{tmp}/artifacts-{name}', home=f'{tmp}/home', progress=False)
    try:
        start = time.perf_counter()
        db.apply(Table('points', fields={'n': 'int', 'bucket': 'int'}, folds=False))
        db['points'].insert([{'id': str(i), 'n': i, 'bucket': i % 100} for i in range(len(vectors))]).execute()
        listener = ObjectModel('lookup', object=lambda i: vectors[i], datatype=f'vector[float32:{DIM}]').to_listener(
            'points', key='n')
        db.apply(listener)
        for searcher in SEARCHERS:
            db.apply(VectorIndex(f'idx-{searcher}', indexing_listener=listener, searcher=searcher))
            db.vector_indexes.get(f'idx-{searcher}')  # built or opened before the timing
        native = db.databackend.native_vectors(listener.outputs, listener.outputs)
        print(f'\n{name}: {len(vectors)} x {DIM} vectors loaded and indexed in {time.perf_counter() - start:.0f}s '
              f'(vectors stored natively: {native})')
        points = db['points']
        print(f'{"filter":>10} {"searcher":>8} {"QPS":>8} {"median ms":>10} {"recall@10":>10} {"10 rows":>8}')
        for share in SHARES:
            truth = truth_for(vectors, queries, share)
            results = {}
            for searcher in SEARCHERS:
                hits, times = [], []
                for q in queries:
                    query = points.like(q, vector_index=f'idx-{searcher}', n=10)
                    if share is not None:
                        query = query.filter(points['bucket'] < round(100 * share))
                    began = time.perf_counter()
                    rows = query.select().execute().tolist()
                    times.append(time.perf_counter() - began)
                    hits.append([int(r['id']) for r in rows])
                qps = len(queries) / sum(times)
                rec = np.mean([recall(h, t) for h, t in zip(hits, truth)])
                full = np.mean([len(h) == 10 for h in hits])
                results[searcher] = qps
                label = 'none' if share is None else f'{share:.0%}'
                print(f'{label:>10} {searcher:>8} {qps:8.1f} {1000 * statistics.median(times):10.1f} {rec:10.3f} '
                      f'{full:8.0%}')
            print(f'{"":>10} native / hnsw QPS {results["native"] / results["hnsw"]:.2f}x, '
                  f'native / exact {results["native"] / results["exact"]:.2f}x')
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=50_000)
    parser.add_argument('--queries', type=int, default=100)
    parser.add_argument('--backends', default='chdb', help='comma-separated: chdb, duckdb')
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    vectors = clustered(rng, args.rows, centres)
    queries = clustered(rng, args.queries, centres)
    print(f'{args.rows} x {DIM} clustered vectors, {args.queries} queries, k=10, one query at a time')
    for name in args.backends.split(','):
        with tempfile.TemporaryDirectory() as tmp:
            run(name, URIS[name].format(tmp=tmp), vectors, queries, tmp)


if __name__ == '__main__':
    main()
