"""Vector search pushed down to PostgreSQL with pgvector, unfiltered and filtered, against the same SQL run on a raw
psycopg connection, in the same run.

    python -m benchmarks.pgvector_search [--rows 50000] [--queries 200] [--uri postgresql://...] [--unprepared]

Without ``--uri`` a PostgreSQL 16 with pgvector is started from the ``pgserver`` wheel in a temporary folder (as
the tests do), with ``maintenance_work_mem`` raised so that the HNSW index is built in memory. pgvector 0.8 (its
iterative index scans) on PGlite: ``pglite-server`` (``tests/pglite_server.py``) and ``--uri ... --unprepared``.

Data: unit vectors of 384 dimensions drawn around 2,000 Gaussian centres (as ``vector_search.py``), queries drawn
the same way, k = 10. Each row has a ``bucket`` (its number modulo 1000, indexed); ``bucket < b`` keeps 1%, 10% or
50% of the rows. Ground truth is exact (filtered) search with numpy. One listener stores the vectors natively
(``VECTOR(384)`` with pgvector's HNSW index, default m=16, ef_construction=64); ``searcher='pgvector'``.

Each side, one query at a time, after one untimed pass (which also teaches superduper each filter's share):

- ``superduper``: ``t.like(vector, vector_index=..., n=10)[.filter(t['bucket'] < b)].select().execute()``: the
  search planned by the share of rows matching (exact over the matching rows, or HNSW candidates checked against
  the filter; on pgvector 0.8 one iterative index scan with the filter), then the ten rows fetched by key and
  decoded;
- ``raw``: the same search statements superduper sent for that query (recorded in the untimed pass, with their
  parameters, ``SET``s included), then ``SELECT id, n, bucket FROM points WHERE id = ANY(...)`` for the hits, on a
  psycopg connection: the work of the database without superduper's;
- ``old plan`` (filtered only): the statement superduper sent before the plan was selectivity-aware, on psycopg:
  every matching row's distance (``ORDER BY distance + 0``, joined to the filtered rows), exact; then the rows;
- ``in process``: the same ``like()`` through a second index over the same listener, ``searcher='hnsw'``: the
  vectors stay stored in PostgreSQL, the search runs on an HNSW graph in this process (which follows the outputs
  table), filters through the matching rows it remembers; then the ten rows fetched by key and decoded.

The sides take turns query by query, each going first in turn (a busy machine slows each alike, and none always
finds the pages another just read in PostgreSQL's cache); QPS is queries / the side's summed time.

Printed: QPS, recall@10, the share of queries that returned 10 rows, the plans followed (strategy, candidates, ef),
and the ratios superduper / raw, superduper filtered / unfiltered (target >= 0.3x) and the new plan's SQL / the old
plan's (both raw); for the in-process index, its QPS and recall, filtered / its unfiltered and / pgvector's
unfiltered. The machine may be shared and noisy: the script reports what it measures and never fails on a
time.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time

import numpy as np
import sqlalchemy as sa

from benchmarks.vector_search import DIM, clustered, recall
from superduper import ObjectModel, Table, VectorIndex, superduper

SHARES = (None, 0.01, 0.10, 0.50)


def start_server(folder: str) -> object:
    import pgserver

    server = pgserver.get_server(folder, cleanup_mode='delete')
    server.psql("ALTER SYSTEM SET maintenance_work_mem = '1GB'")
    server.psql('SELECT pg_reload_conf()')
    return server


def load(db, vectors: np.ndarray) -> str:
    start = time.perf_counter()
    db.apply(Table('points', fields={'n': 'int', 'bucket': 'int'}, folds=False))
    db['points'].insert([{'id': str(i), 'n': i, 'bucket': i % 1000} for i in range(len(vectors))]).execute()
    with db.databackend.begin() as conn:
        conn.exec_driver_sql('CREATE INDEX points_bucket ON points (bucket)')
    listener = ObjectModel('lookup', object=lambda i: vectors[i], datatype=f'vector[float32:{DIM}]').to_listener(
        'points', key='n')
    db.apply(listener)
    loaded = time.perf_counter()
    db.apply(VectorIndex('bench', indexing_listener=listener, searcher='pgvector'))
    built = time.perf_counter()
    db.apply(VectorIndex('bench-process', indexing_listener=listener, searcher='hnsw'))
    with db.databackend.begin() as conn:
        conn.exec_driver_sql('ANALYZE')
    print(f'{len(vectors)} x {DIM} vectors stored in {loaded - start:.0f}s, HNSW index built in '
          f'{built - loaded:.0f}s (in process: {time.perf_counter() - built:.0f}s)')
    return listener.outputs


class Recorder:
    """The statements (and parameters) this thread sends through the engine while on."""

    def __init__(self, engine: sa.Engine):
        self.engine, self.sent, self.on = engine, [], False
        self.thread = threading.get_ident()
        sa.event.listen(engine, 'before_cursor_execute', self.record)

    def record(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.on and threading.get_ident() == self.thread:
            self.sent.append((statement, parameters))

    def take(self) -> list:
        sent, self.sent = self.sent, []
        return sent


def like(points, q: np.ndarray, share: float | None, index: str = 'bench'):
    query = points.like(q, vector_index=index, n=10)
    return query if share is None else query.filter(points['bucket'] < round(1000 * share))


def record(db, points, queries: np.ndarray, share: float | None) -> list:
    """The untimed pass: per query, the statements superduper sent for the search and the keys it found."""
    recorder = Recorder(db.databackend.engine)
    recorder.on, sent = True, []
    for q in queries:
        found = [r['id'] for r in like(points, q, share).select().execute()]
        sent.append((recorder.take(), found))
    sa.event.remove(db.databackend.engine, 'before_cursor_execute', recorder.record)
    return sent


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def ours(points, q: np.ndarray, share: float | None, index: str = 'bench') -> tuple[list, dict]:
    cursor = like(points, q, share, index).select().execute()
    return [int(r['id']) for r in cursor], cursor.plan


def raw(conn, sent: list, found: list) -> None:
    """The same search statements, then the rows of the hits by key, on psycopg."""
    with conn.cursor() as cursor:
        for statement, parameters in sent:
            cursor.execute(statement, parameters)
            cursor.fetchall()
        cursor.execute('SELECT id, n, bucket FROM points WHERE id = ANY(%s)', (found,))
        cursor.fetchall()
    conn.rollback()


OLD = ('SELECT o._source FROM "{outputs}" o JOIN points s ON s.id = o._source WHERE o."{outputs}" IS NOT NULL '
       'AND s.bucket < %s ORDER BY (o."{outputs}" <=> %s::vector) + 0 LIMIT 10')


def old_plan(conn, outputs: str, q: np.ndarray, share: float) -> list:
    """The statement of the search before it planned by selectivity (exact over every matching row), on psycopg."""
    with conn.cursor() as cursor:
        cursor.execute(OLD.format(outputs=outputs), (round(1000 * share), '[' + ','.join(map(str, q.tolist())) + ']'))
        found = [row[0] for row in cursor.fetchall()]
        cursor.execute('SELECT id, n, bucket FROM points WHERE id = ANY(%s)', (found,))
        cursor.fetchall()
    conn.rollback()
    return [int(i) for i in found]


def described(plans: list) -> str:
    counted = collections.Counter(
        (p['strategy'], p.get('candidates'), p.get('ef')) if 'candidates' in p else (p['strategy'], p.get('ef'))
        for p in plans)
    return '; '.join(f'{n}x {", ".join(str(x) for x in key if x is not None)}' for key, n in counted.most_common(4))


def unprepared(dbapi_connection, record) -> None:
    dbapi_connection.prepare_threshold = None


def main() -> None:
    import psycopg

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=50_000)
    parser.add_argument('--queries', type=int, default=200)
    parser.add_argument('--uri', help='a PostgreSQL database with the vector extension (default: pgserver)')
    parser.add_argument('--unprepared', action='store_true',
                        help="psycopg's prepared statements off: for a server that runs every connection in one session "
                             '(pglite-server, as in tests/pglite_server.py; a transaction-pooling PgBouncer)')
    args = parser.parse_args()
    if args.unprepared:
        sa.event.listen(sa.engine.Engine, 'connect', unprepared)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, DIM)).astype(np.float32)
    vectors = clustered(rng, args.rows, centres)
    queries = clustered(rng, args.queries, centres)
    with tempfile.TemporaryDirectory() as tmp:
        server = None if args.uri else start_server(f'{tmp}/pg')
        uri = args.uri or server.get_uri()
        db = superduper(uri, artifact_store=f'filesystem://{tmp}/artifacts', home=f'{tmp}/home', progress=False)
        try:
            outputs = load(db, vectors)
            points = db['points']
            conn = psycopg.connect(str(db.databackend.engine.url.set(drivername='postgresql')
                                       .render_as_string(hide_password=False)),
                                   **({'prepare_threshold': None} if args.unprepared else {}))
            print(f'{args.queries} queries, k=10, one at a time, every side of a query run after the other (the '
                  'machine may be busy: each side meets the same load)')
            sent = {share: record(db, points, queries, share) for share in SHARES}
            for share in SHARES:  # untimed: the in-process index learns each filter's matching rows
                for q in queries:
                    ours(points, q, share, 'bench-process')
            seconds = collections.defaultdict(float)
            hits, plans = collections.defaultdict(list), collections.defaultdict(list)
            for i, q in enumerate(queries):
                for share in SHARES:
                    sides = [('ours', lambda: ours(points, q, share)), ('raw', lambda: (raw(conn, *sent[share][i]), None)),
                             ('process', lambda: ours(points, q, share, 'bench-process'))]
                    if share is not None:
                        sides.append(('old', lambda: (old_plan(conn, outputs, q, share), None)))
                    turn = i % len(sides)  # each side goes first in turn: none always meets what another warmed
                    for side, action in sides[turn:] + sides[:turn]:
                        took, (found, plan) = timed(action)
                        seconds[side, share] += took
                        if side != 'raw':
                            hits[side, share].append(found)
                        if side == 'ours':
                            plans[share].append(plan)
            qps = {key: args.queries / took for key, took in seconds.items()}
            for share in SHARES:
                rows = np.arange(args.rows)
                allowed = rows if share is None else rows[rows % 1000 < round(1000 * share)]
                truth = allowed[np.argsort(-(queries @ vectors[allowed].T), axis=1)[:, :10]]
                rec = {side: np.mean([recall(h, t) for h, t in zip(hits[side, share], truth)])
                       for side in ('ours', 'old', 'process') if (side, share) in hits}
                full = np.mean([len(h) == 10 for h in hits['ours', share]])
                label = 'unfiltered' if share is None else f'filtered {share:.0%}'
                line = (f'{label}: superduper {qps["ours", share]:.0f} QPS, recall {rec["ours"]:.3f}, {full:.0%} '
                        f'returned 10 rows; raw {qps["raw", share]:.0f} QPS '
                        f'(superduper {qps["ours", share] / qps["raw", share]:.2f}x)')
                if share is not None:
                    line += (f'; {qps["ours", share] / qps["ours", None]:.2f}x unfiltered (target >= 0.3x); old plan '
                             f'{qps["old", share]:.0f} QPS, recall {rec["old"]:.3f} (the new SQL, raw, '
                             f'{qps["raw", share] / qps["old", share]:.2f}x the old)')
                print(line)
                line = f'    in process (searcher=\'hnsw\'): {qps["process", share]:.0f} QPS, recall {rec["process"]:.3f}'
                if share is not None:
                    line += (f'; {qps["process", share] / qps["process", None]:.2f}x its unfiltered, '
                             f'{qps["process", share] / qps["ours", None]:.2f}x pgvector\'s unfiltered')
                print(line)
                print(f'    plans: {described(plans[share])}; search statements a query: '
                      f'{np.mean([len(s) for s, _ in sent[share]]):.1f}')
            conn.close()
        finally:
            db.close()


if __name__ == '__main__':
    main()
