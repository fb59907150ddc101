"""Hybrid search (vector + keyword, fused by reciprocal rank fusion) against LanceDB's hybrid search, in the same run.

    python benchmarks/hybrid.py [--rows 20000] [--queries 200] [--backends sqlite,duckdb]
                                [--lancedb-python /tmp/lancedb-venv/bin/python]

LanceDB runs in its own environment (``python3 -m venv /tmp/lancedb-venv && /tmp/lancedb-venv/bin/pip install
lancedb``; it pulls no torch): this script writes the corpus to a folder and runs itself there with
``--lancedb-side``. Without ``--lancedb-python`` only superduper is measured.

Corpus: ``--rows`` texts of 8-40 words drawn from a Zipf vocabulary of 5,000 made-up words; each text's vector is
the mean of its words' random vectors (64 dimensions) plus noise, so words and vectors agree as with a real
embedding. A query is 2-3 words of a random text (its vector made the same way). Every query asks for 10 rows.

What each side does, per query (one thread, queries one after the other, rows returned with their text):

- superduper: ``t.like(vector, vector_index=..., n=10).match(text, keyword_index=...).select('txt')``: the exact
  vector search (in process, numpy) and the keyword search each rank ``max(4 n, 20)`` = 40 candidates, fused by
  RRF (k = 60), the 10 best rows fetched from the database. Keyword engine: SQLite FTS5 (``bm25()``, FTS5's idf) on
  ``sqlite``, the in-process BM25 engine (Lucene's idf) on ``duckdb``.
- LanceDB: ``tbl.search(query_type='hybrid').vector(v).text(t).rerank(RRFReranker(K=60)).limit(10)``: a flat
  (exact) vector scan and its native BM25 full-text index (no stemming, no stopwords), each ranking 10 candidates
  (its sub-query limit is the final limit), fused by its RRF reranker; and the same with ``.limit(40)`` and the
  first 10 kept (40 candidates a part, as superduper ranks).

Recall: the share of each system's 10 rows found in the exact fused top 10, computed here from the exact cosine
ranking and the exact Okapi BM25 ranking (k1 1.2, b 0.75, Lucene's idf, words split on spaces), fusing the first 40
rows of each (what a system ranking 40 candidates a part exactly returns) and the first 1,000 (all that can matter).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

DIM = 64
VOCAB = 5000
N = 10
DEPTH = 1000  # rows of each exact ranking fused for the reference


def corpus(rows: int, queries: int, folder: str) -> None:
    rng = np.random.default_rng(0)
    letters = np.array(list('abcdefghijklmnopqrstuvwxyz'))
    vocab = sorted({''.join(rng.choice(letters, rng.integers(4, 10))) for _ in range(VOCAB * 2)})[:VOCAB]
    rng.shuffle(vocab)
    weights = 1 / np.arange(1, VOCAB + 1)
    weights /= weights.sum()
    word_vectors = rng.normal(size=(VOCAB, DIM)).astype(np.float32)

    def text_and_vector(ids: np.ndarray) -> tuple[str, np.ndarray]:
        v = word_vectors[ids].mean(axis=0) + rng.normal(scale=0.05, size=DIM).astype(np.float32)
        return ' '.join(vocab[i] for i in ids), (v / np.linalg.norm(v)).astype(np.float32)

    docs = [text_and_vector(rng.choice(VOCAB, rng.integers(8, 41), p=weights)) for _ in range(rows)]
    asked = []
    for _ in range(queries):
        words = np.array([vocab.index(w) for w in docs[rng.integers(rows)][0].split()])
        asked.append(text_and_vector(rng.choice(words, rng.integers(2, 4), replace=False)))
    with open(os.path.join(folder, 'texts.json'), 'w') as f:
        json.dump({'docs': [t for t, _ in docs], 'queries': [t for t, _ in asked]}, f)
    np.save(os.path.join(folder, 'doc_vectors.npy'), np.stack([v for _, v in docs]))
    np.save(os.path.join(folder, 'query_vectors.npy'), np.stack([v for _, v in asked]))


def load(folder: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    with open(os.path.join(folder, 'texts.json')) as f:
        texts = json.load(f)
    return (texts['docs'], np.load(os.path.join(folder, 'doc_vectors.npy')), texts['queries'],
            np.load(os.path.join(folder, 'query_vectors.npy')))


def exact_rrf(docs: list[str], vectors: np.ndarray, queries: list[str], query_vectors: np.ndarray,
              depth: int) -> list[list[int]]:
    """The exact fused top 10 of each query (rows by position in ``docs``), fusing the first ``depth`` rows of the
    exact vector and keyword rankings."""
    from scipy import sparse

    index = {}
    rows, cols, vals = [], [], []
    for d, text in enumerate(docs):
        for word in text.split():
            rows.append(d)
            cols.append(index.setdefault(word, len(index)))
            vals.append(1.0)
    tf = sparse.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(index))).tocsc()  # duplicates summed
    lengths = np.array([len(t.split()) for t in docs], dtype=np.float64)
    df = np.diff(tf.indptr)
    idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    norm = 1.2 * (0.25 + 0.75 * lengths / lengths.mean())
    best = []
    for text, qv in zip(queries, query_vectors):
        scores = np.zeros(len(docs))
        for word in dict.fromkeys(text.split()):
            j = index.get(word)
            if j is None:
                continue
            col = tf.getcol(j)
            d, f = col.indices, col.data
            scores[d] += idf[j] * f * 2.2 / (f + norm[d])
        matched = np.flatnonzero(scores > 0)
        keyword = matched[np.lexsort((matched, -scores[matched]))][:depth]
        vector = np.argsort(-(vectors @ qv), kind='stable')[:depth]
        fused: dict[int, float] = {}
        for ranking in (vector, keyword):
            for rank, d in enumerate(ranking.tolist(), 1):
                fused[d] = fused.get(d, 0.0) + 1 / (60 + rank)
        best.append(sorted(fused, key=lambda d: -fused[d])[:N])
    return best


def timed(run, queries: list) -> tuple[list, list[float]]:
    results, latencies = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(run(q))
        latencies.append(time.perf_counter() - start)
    return results, latencies


def report(name: str, results: list[list[int]], latencies: list[float], truth: dict[int, list[list[int]]]) -> dict:
    recall = {depth: float(np.mean([len(set(r[:N]) & set(t)) / N for r, t in zip(results, best)]))
              for depth, best in truth.items()}
    ms = np.array(latencies) * 1000
    line = {'system': name, 'qps': len(latencies) / sum(latencies), 'p50_ms': float(np.percentile(ms, 50)),
            'p99_ms': float(np.percentile(ms, 99)), 'recall': recall}
    shown = '  '.join(f'{recall[d]:.3f}' for d in sorted(truth))
    print(f"{name:34s} {line['qps']:7.1f} QPS  p50 {line['p50_ms']:6.2f} ms  p99 {line['p99_ms']:6.2f} ms  "
          f"recall@10 {shown}", flush=True)
    return line


def superduper_side(backend: str, folder: str, truth: dict) -> list[dict]:
    from superduper import KeywordIndex, ObjectModel, Table, VectorIndex, superduper

    docs, vectors, queries, query_vectors = load(folder)
    with tempfile.TemporaryDirectory() as tmp:
        uri = {'sqlite': f'sqlite://{tmp}/hybrid.db', 'duckdb': f'duckdb://{tmp}/hybrid.duckdb'}.get(backend, backend)
        db = superduper(uri, artifact_store=f'filesystem://{tmp}/artifacts', home=f'{tmp}/home', progress=False)
        try:
            db.apply(Table('docs', fields={'n': 'int', 'txt': 'str'}, folds=False))
            db['docs'].insert([{'id': str(i), 'n': i, 'txt': t} for i, t in enumerate(docs)]).execute()
            lookup = ObjectModel('lookup', object=lambda i: vectors[i], datatype=f'vector[float32:{DIM}]')
            db.apply(VectorIndex('vec', indexing_listener=lookup.to_listener('docs', key='n'), searcher='exact'))
            db.apply(KeywordIndex('kw', select='docs', key='txt'))
            t = db['docs']

            def run(i: int) -> list[int]:
                query = t.like(query_vectors[i], vector_index='vec', n=N).match(queries[i], keyword_index='kw')
                return [int(r['id']) for r in query.select('id', 'txt').execute()]

            run(0)  # the indexes are loaded by the first search
            results, latencies = timed(run, range(len(queries)))
            return [report(f'superduper ({backend})', results, latencies, truth)]
        finally:
            db.close()


def lancedb_side(folder: str) -> None:
    """Run in LanceDB's environment: prints one JSON line of results and latencies per configuration."""
    import lancedb
    import pyarrow as pa
    from lancedb.rerankers import RRFReranker

    docs, vectors, queries, query_vectors = load(folder)
    db = lancedb.connect(os.path.join(folder, 'lance'))
    data = pa.table({'id': pa.array(range(len(docs)), pa.int64()), 'txt': docs,
                     'vector': pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)})
    tbl = db.create_table('docs', data, mode='overwrite')
    tbl.create_fts_index('txt', stem=False, remove_stop_words=False, ascii_folding=False, lower_case=True)
    reranker = RRFReranker(K=60)
    for limit in (N, 4 * N):
        def run(i: int) -> list[int]:
            q = (tbl.search(query_type='hybrid').vector(query_vectors[i]).text(queries[i])
                 .distance_type('cosine').rerank(reranker).select(['id', 'txt']).limit(limit))
            return q.to_arrow()['id'].to_pylist()[:N]

        run(0)
        results, latencies = timed(run, range(len(queries)))
        print(json.dumps({'limit': limit, 'results': results, 'latencies': latencies}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=20_000)
    parser.add_argument('--queries', type=int, default=200)
    parser.add_argument('--backends', default='sqlite,duckdb', help='sqlite, duckdb or database URIs, comma-separated')
    parser.add_argument('--lancedb-python', default=None, help="the Python of LanceDB's own environment")
    parser.add_argument('--lancedb-side', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lancedb_side:
        lancedb_side(args.lancedb_side)
        return
    with tempfile.TemporaryDirectory() as folder:
        corpus(args.rows, args.queries, folder)
        docs, vectors, queries, query_vectors = load(folder)
        truth = {depth: exact_rrf(docs, vectors, queries, query_vectors, depth) for depth in (4 * N, DEPTH)}
        print(f'{args.rows} texts, {args.queries} queries, top {N}; recall against the exact RRF of the first '
              f'{4 * N} and the first {DEPTH} rows of each exact ranking')
        lines = []
        for backend in args.backends.split(','):
            lines += superduper_side(backend, folder, truth)
        if args.lancedb_python:
            done = subprocess.run([args.lancedb_python, os.path.abspath(__file__), '--lancedb-side', folder],
                                  capture_output=True, text=True, check=True)
            for out in done.stdout.splitlines():
                found = json.loads(out)
                name = f"LanceDB {'(10 a part)' if found['limit'] == N else '(40 a part, first 10)'}"
                lines.append(report(name, found['results'], found['latencies'], truth))


if __name__ == '__main__':
    main()
