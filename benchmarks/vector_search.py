"""Vector search end to end against the raw ANN library, in the same run.

    python benchmarks/vector_search.py [--rows 100000] [--queries 1000] [--backend sqlite]
                                       [--lancedb-python /tmp/lancedb-venv/bin/python]

Data: unit vectors of 384 dimensions drawn around 2,000 Gaussian centres (uniform random vectors are the worst case
for HNSW and tell nothing), queries drawn the same way, k = 10. Ground truth is exact search with numpy.

1. Index build: ``db.apply(VectorIndex(...))`` over a listener whose outputs are already stored (reading the vectors
   from the database plus building HNSW) against hnswlib's ``add_items`` of the same vectors with the same
   parameters. Target <= 1.3x.
2. Single-query QPS of ``t.like(vector, vector_index=..., n=10).select().execute()`` (search plus fetching the ten
   rows from the database) against hnswlib's ``knn_query`` alone, at the same ef, with recall@10 for both.
   Target >= 0.5x of the raw QPS at recall >= 0.95.
3. Filtered search at 1%, 10% and 50% selectivity (``.filter(t['bucket'] < b)``, ``bucket`` indexed): recall@10
   against exact filtered search, the share of queries that returned 10 rows, QPS and the plan chosen, against
   hnswlib's ``knn_query`` with a filter callback over a position mask (the same graph, no database), and against
   LanceDB in its own environment (``python3 -m venv /tmp/lancedb-venv && /tmp/lancedb-venv/bin/pip install
   lancedb``, given as ``--lancedb-python``): the same vectors and buckets in a Lance table with an IVF_PQ index
   (256 partitions, 48 sub-vectors, cosine; searched with 20 probes, refine factor 10) and a B-tree index on
   ``bucket``, searched unfiltered and with ``.where('bucket < b', prefilter=True)``, fetching id and bucket. Target:
   recall >= 0.95, always 10 rows, QPS >= 0.3x of the unfiltered ``like()``.
4. Memory: peak RSS of a process that opens the saved index, searches it (with and without filters) and saves
   it, against a process where hnswlib alone loads the same graph and searches it (each less the process's RSS
   before the index is opened). Target <= 1.5x.
5. Quantised indexes (``quantization='int8'`` and ``'binary'``) over the same outputs: QPS and recall@10 of
   ``like()`` against the float32 HNSW index, and the RSS of a process searching each saved index against the float32
   searcher's. Target: recall >= 0.95, memory <= 1/4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 384
SHARES = (0.01, 0.10, 0.50)


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(got: list, truth: np.ndarray) -> float:
    return len(set(got) & set(truth.tolist())) / len(truth) if len(truth) else 1.0


def lancedb_side(folder: str) -> None:
    """Run in LanceDB's environment: one JSON line per search (unfiltered, then each share) with QPS and results."""
    import lancedb
    import pyarrow as pa

    vectors, queries = np.load(f'{folder}/vectors.npy'), np.load(f'{folder}/queries.npy')
    db = lancedb.connect(f'{folder}/lance')
    data = pa.table({'id': pa.array(np.arange(len(vectors))), 'bucket': pa.array(np.arange(len(vectors)) % 1000),
                     'vector': pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)})
    tbl = db.create_table('points', data, mode='overwrite')
    start = time.perf_counter()
    tbl.create_index(metric='cosine', index_type='IVF_PQ', num_partitions=256, num_sub_vectors=48)
    tbl.create_scalar_index('bucket')
    build = time.perf_counter() - start
    for share in (None, *SHARES):
        def run(q: np.ndarray) -> list[int]:
            search = tbl.search(q).distance_type('cosine').nprobes(20).refine_factor(10).select(['id', 'bucket'])
            if share is not None:
                search = search.where(f'bucket < {int(1000 * share)}', prefilter=True)
            return search.limit(10).to_arrow()['id'].to_pylist()

        run(queries[0])
        start = time.perf_counter()
        hits = [run(q) for q in queries]
        qps = len(queries) / (time.perf_counter() - start)
        print(json.dumps({'share': share, 'qps': qps, 'hits': hits, 'build': build}), flush=True)


def lancedb_figures(python: str, vectors: np.ndarray, queries: np.ndarray) -> dict:
    """LanceDB's figures, run in its own environment: {share (None: unfiltered): (qps, hits)}."""
    with tempfile.TemporaryDirectory() as folder:
        np.save(f'{folder}/vectors.npy', vectors)
        np.save(f'{folder}/queries.npy', queries)
        done = subprocess.run([python, os.path.abspath(__file__), '--lancedb-side', folder], capture_output=True,
                              text=True, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    print(f'LanceDB: IVF_PQ index and bucket index built in {lines[0]["build"]:.1f}s')
    return {line['share']: (line['qps'], line['hits']) for line in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--backend', default='sqlite', help='sqlite or a database URI')
    parser.add_argument('--lancedb-python', default=None, help="the Python of LanceDB's own environment")
    parser.add_argument('--lancedb-side', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lancedb_side:
        lancedb_side(args.lancedb_side)
        return
    import hnswlib

    from superduper import ObjectModel, Table, VectorIndex, superduper
    from superduper.vector_search.hnsw import HnswSearcher

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, DIM)).astype(np.float32)
    vectors = clustered(rng, args.rows, centres)
    queries = clustered(rng, args.queries, centres)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    lance = lancedb_figures(args.lancedb_python, vectors, queries) if args.lancedb_python else {}
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
        ours_hits = [[int(r['id']) for r in points.like(q, vector_index='bench', n=10).select().execute()]
                     for q in queries]
        ours_qps = len(queries) / (time.perf_counter() - start)
        ours_recall = np.mean([recall(h, t) for h, t in zip(ours_hits, truth)])

        print(f'{args.rows} x {DIM} clustered vectors, {len(queries)} queries, k=10, hnswlib {params}')
        print(f'build: superduper {ours_build:.1f}s, hnswlib {raw_build:.1f}s, ratio {ours_build / raw_build:.2f}x '
              '(target <= 1.3x)')
        print(f'search: superduper {ours_qps:.0f} QPS (recall {ours_recall:.3f}), hnswlib {raw_qps:.0f} QPS '
              f'(recall {raw_recall:.3f}), ratio {ours_qps / raw_qps:.2f}x (target >= 0.5x)')
        if None in lance:
            qps, hits = lance[None]
            lance_recall = np.mean([recall(h, t) for h, t in zip(hits, truth)])
            print(f'search: LanceDB IVF_PQ {qps:.0f} QPS (recall {lance_recall:.3f})')
        for share in SHARES:
            bound = int(1000 * share)
            mask = np.arange(args.rows) % 1000 < bound
            allowed = np.flatnonzero(mask)
            sub_truth = allowed[np.argsort(-(queries @ vectors[allowed].T), axis=1)[:, :10]]
            query = points.filter(points['bucket'] < bound)
            plans: dict[str, int] = {}
            start = time.perf_counter()
            hits = []
            for q in queries:
                cursor = query.like(q, vector_index='bench', n=10).execute()
                hits.append([int(r['id']) for r in cursor])
                plans[cursor.plan['strategy']] = plans.get(cursor.plan['strategy'], 0) + 1
            qps = len(queries) / (time.perf_counter() - start)
            full = np.mean([len(h) == 10 for h in hits])
            rec = np.mean([recall(h, t) for h, t in zip(hits, sub_truth)])
            ef = max(params['ef'], int(np.ceil(4 * 10 / np.sqrt(share))))
            raw.set_ef(ef)
            allowed_label = mask.tolist().__getitem__
            start = time.perf_counter()
            raw_hits = [raw.knn_query(q, k=10, filter=allowed_label)[0][0].tolist() for q in queries]
            raw_f_qps = len(queries) / (time.perf_counter() - start)
            raw_f_rec = np.mean([recall(h, t) for h, t in zip(raw_hits, sub_truth)])
            raw_full = np.mean([len(h) == 10 for h in raw_hits])
            print(f'filtered {share:.0%}: superduper recall {rec:.3f}, {full:.0%} of queries returned 10 rows, '
                  f'{qps:.0f} QPS ({qps / ours_qps:.2f}x unfiltered, target >= 0.3x), plans {plans}; '
                  f'hnswlib filter callback (ef={ef}) recall {raw_f_rec:.3f}, {raw_full:.0%} returned 10, '
                  f'{raw_f_qps:.0f} QPS')
            if share in lance:
                l_qps, l_hits = lance[share]
                print(f'filtered {share:.0%}: LanceDB prefilter recall '
                      f'{np.mean([recall(h, t) for h, t in zip(l_hits, sub_truth)]):.3f}, '
                      f'{np.mean([len(h) == 10 for h in l_hits]):.0%} returned 10, {l_qps:.0f} QPS')
            raw.set_ef(params['ef'])
        quantised = quantised_search(db, listener, queries, truth, ours_qps, ours_recall)
        db.close()
        float32 = memory(tmp, queries)
        quantised_memory(tmp, queries, float32, args.rows, quantised)


def quantised_search(db, listener, queries: np.ndarray, truth: np.ndarray, qps32: float, recall32: float) -> dict:
    """QPS and recall@10 of ``like()`` on an int8 and a binary index of the same outputs, against the float32 one."""
    from superduper import VectorIndex

    points = db['points']
    figures = {}
    for kind in ('int8', 'binary'):
        start = time.perf_counter()
        db.apply(VectorIndex(f'bench-{kind}', indexing_listener=listener, quantization=kind))
        build = time.perf_counter() - start
        start = time.perf_counter()
        hits = [[int(r['id']) for r in points.like(q, vector_index=f'bench-{kind}', n=10).select().execute()]
                for q in queries]
        qps = len(queries) / (time.perf_counter() - start)
        rec = np.mean([recall(h, t) for h, t in zip(hits, truth)])
        figures[kind] = (qps, rec)
        print(f'quantised {kind}: build {build:.1f}s, {qps:.0f} QPS, recall {rec:.3f}; float32 HNSW {qps32:.0f} QPS, '
              f'recall {recall32:.3f} (target: recall >= 0.95)')
    return figures


SEARCHING = '''
import sys, numpy as np
def rss(): return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
def peak(): return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024  # this program's own
folder, queries, kind = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
if kind == 'hnswlib':
    import hnswlib
    base = rss()
    index = hnswlib.Index(space='ip', dim=queries.shape[1])
    index.load_index(folder + '/hnsw.bin')
    index.set_ef(64)
    for q in queries:
        index.knn_query(q, k=10)
else:
    import tempfile
    from superduper.vector_search.hnsw import HnswSearcher
    base = rss()
    searcher = HnswSearcher(queries.shape[1])
    searcher.load(folder)
    ids = searcher.ids[::10]
    subset = searcher.subset(ids)  # the rows a filter matched, remembered between searches
    for q in queries:
        searcher.search(q, 10)
        searcher.search(q, 10, candidates=ids[:2000])
        searcher.search_subset(q, 10, subset)
    with tempfile.TemporaryDirectory() as out:
        searcher.save(out)
print(base, rss(), peak())
'''


def memory(tmp: str, queries: np.ndarray) -> None:
    """Peak RSS of a process searching (and saving) the saved index against hnswlib alone holding its graph."""
    import glob

    folder = os.path.dirname(max(glob.glob(f'{tmp}/artifacts/**/hnsw.bin', recursive=True), key=os.path.getmtime))
    np.save(f'{tmp}/queries.npy', queries[:200])
    figures = {}
    for kind in ('hnswlib', 'superduper'):
        out = subprocess.run([sys.executable, '-c', SEARCHING, folder, f'{tmp}/queries.npy', kind], check=True,
                             capture_output=True, text=True).stdout.split()
        base, steady, top = map(float, out)
        figures[kind] = (base, steady, top)
        print(f'memory, {kind}: {top:.0f} MB peak ({top - base:.0f} MB above the process before opening the index), '
              f'{steady:.0f} MB at the end')
    ours, raw = (figures[k][2] - figures[k][0] for k in ('superduper', 'hnswlib'))
    print(f'memory ratio (searching, filtered searches and saving, vs hnswlib searching): {ours / raw:.2f}x '
          '(target <= 1.5x)')
    return figures


QUANTISED = '''
import sys, numpy as np
def rss(): return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
def peak(): return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
folder, queries, kind = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
from superduper.vector_search.quantized import QuantizedSearcher
np.ones((256, 256), dtype=np.float32) @ np.ones((256, 256), dtype=np.float32)
base = rss()
searcher = QuantizedSearcher(queries.shape[1], 'cosine', kind)
searcher.load(folder)
ids = searcher.ids[::10]
for q in queries:
    searcher.search(q, 10)
    searcher.search(q, 10, candidates=ids[:2000])
print(base, rss(), peak())
'''


def quantised_memory(tmp: str, queries: np.ndarray, float32: dict, rows: int, quantised: dict) -> None:
    """RSS of a process searching each saved quantised index against the float32 HNSW one (the rescoring store is a
    file read a row at a time: its size on disk is given beside)."""
    import glob

    folders = glob.glob(f'{tmp}/artifacts/**/vectors.f32', recursive=True)
    base32, _, top32 = float32['superduper']
    for kind, marker in (('int8', 'codes.npy'), ('binary', 'bits_codes.npy')):
        folder = max((os.path.dirname(f) for f in folders if os.path.exists(os.path.join(os.path.dirname(f), marker))),
                     key=os.path.getmtime)
        out = subprocess.run([sys.executable, '-c', QUANTISED, folder, f'{tmp}/queries.npy', kind], check=True,
                             capture_output=True, text=True).stdout.split()
        base, steady, top = map(float, out)
        disk = os.path.getsize(os.path.join(folder, 'vectors.f32')) / 2**20
        print(f'quantised memory, {kind}: {steady - base:.0f} MB steady, {top - base:.0f} MB peak above the process '
              f'before opening ({(top - base) / (top32 - base32):.2f}x the float32 HNSW searcher, target <= 0.25x; '
              f'float32 vectors alone {rows * DIM * 4 / 2**20:.0f} MB); rescoring store on disk {disk:.0f} MB; '
              f'{quantised[kind][0]:.0f} QPS, recall {quantised[kind][1]:.3f}')


if __name__ == '__main__':
    main()
