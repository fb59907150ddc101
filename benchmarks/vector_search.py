"""Vector search end to end against the raw ANN library, in the same run.

    python benchmarks/vector_search.py [--rows 100000] [--queries 1000] [--backend sqlite]

Data: unit vectors of 384 dimensions drawn around 2,000 Gaussian centres (uniform random vectors are the worst case
for HNSW and tell nothing), queries drawn the same way, k = 10. Ground truth is exact search with numpy.

1. Index build: ``db.apply(VectorIndex(...))`` over a listener whose outputs are already stored (reading the vectors
   from the database plus building HNSW) against hnswlib's ``add_items`` of the same vectors with the same
   parameters. Target <= 1.3x.
2. Single-query QPS of ``t.like(vector, vector_index=..., n=10).select().execute()`` (search plus fetching the ten
   rows from the database) against hnswlib's ``knn_query`` alone, at the same ef, with recall@10 for both.
   Target >= 0.5x of the raw QPS at recall >= 0.95.
3. Filtered search at 1% and 10% selectivity (``.filter(t['bucket'] < b)``, ``bucket`` indexed): recall@10 against
   exact filtered search, the share of queries that returned 10 rows, and QPS.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from superduper import ObjectModel, Table, VectorIndex, superduper
from superduper.vector_search.hnsw import HnswSearcher

DIM = 384


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(got: list, truth: np.ndarray) -> float:
    return len(set(got) & set(truth.tolist())) / len(truth) if len(truth) else 1.0


def main() -> None:
    import hnswlib

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--backend', default='sqlite', help='sqlite or a database URI')
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, DIM)).astype(np.float32)
    vectors = clustered(rng, args.rows, centres)
    queries = clustered(rng, args.queries, centres)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    searcher = HnswSearcher(DIM)  # the parameters superduper uses
    params = {'M': searcher.M, 'ef_construction': searcher.ef_construction, 'ef': searcher.ef}

    with tempfile.TemporaryDirectory() as tmp:
        uri = f'sqlite://{tmp}/vectors.db' if args.backend == 'sqlite' else args.backend
        db = superduper(uri, artifact_store=f'filesystem://{tmp}/artifacts', home=f'{tmp}/home', progress=False)
        db.apply(Table('points', fields={'n': 'int', 'bucket': 'int'}, folds=False))
        db['points'].insert([{'id': str(i), 'n': i, 'bucket': i % 1000} for i in range(args.rows)]).execute()
        with db.databackend.begin() as conn:  # filter columns are indexed, as users of filtered search do
            conn.exec_driver_sql('CREATE INDEX points_bucket ON points (bucket)')
        listener = ObjectModel('lookup', object=lambda i: vectors[i], datatype=f'vector[float32:{DIM}]').to_listener(
            'points', key='n')
        db.apply(listener)

        start = time.perf_counter()
        db.apply(VectorIndex('bench', indexing_listener=listener, searcher='hnsw'))
        ours_build = time.perf_counter() - start
        raw = hnswlib.Index(space='ip', dim=DIM)
        raw.init_index(max_elements=args.rows, ef_construction=params['ef_construction'], M=params['M'])
        start = time.perf_counter()
        raw.add_items(vectors, np.arange(args.rows))
        raw_build = time.perf_counter() - start
        raw.set_ef(params['ef'])

        start = time.perf_counter()
        raw_hits = [raw.knn_query(q, k=10)[0][0].tolist() for q in queries]
        raw_qps = len(queries) / (time.perf_counter() - start)
        raw_recall = np.mean([recall(h, t) for h, t in zip(raw_hits, truth)])

        points = db['points']
        start = time.perf_counter()
        ours_hits = [[int(r['id']) for r in points.like(q, vector_index='bench', n=10).select().execute()] for q in queries]
        ours_qps = len(queries) / (time.perf_counter() - start)
        ours_recall = np.mean([recall(h, t) for h, t in zip(ours_hits, truth)])

        print(f'{args.rows} x {DIM} clustered vectors, {len(queries)} queries, k=10, hnswlib {params}')
        print(f'build: superduper {ours_build:.1f}s, hnswlib {raw_build:.1f}s, ratio {ours_build / raw_build:.2f}x (target <= 1.3x)')
        print(f'search: superduper {ours_qps:.0f} QPS (recall {ours_recall:.3f}), hnswlib {raw_qps:.0f} QPS '
              f'(recall {raw_recall:.3f}), ratio {ours_qps / raw_qps:.2f}x (target >= 0.5x)')
        for share in (0.01, 0.10):
            bound = int(1000 * share)
            allowed = np.flatnonzero(np.arange(args.rows) % 1000 < bound)
            sub_truth = allowed[np.argsort(-(queries @ vectors[allowed].T), axis=1)[:, :10]]
            query = points.filter(points['bucket'] < bound)
            start = time.perf_counter()
            hits = [[int(r['id']) for r in query.like(q, vector_index='bench', n=10).execute()] for q in queries]
            qps = len(queries) / (time.perf_counter() - start)
            full = np.mean([len(h) == 10 for h in hits])
            rec = np.mean([recall(h, t) for h, t in zip(hits, sub_truth)])
            print(f'filtered {share:.0%}: recall {rec:.3f}, {full:.0%} of queries returned 10 rows, {qps:.0f} QPS')
        db.close()


if __name__ == '__main__':
    main()
