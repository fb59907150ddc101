"""Change capture: lag from a plain-SQL insert to its output, and change-processing throughput.

    python benchmarks/change_capture.py [--uri postgresql://postgres@127.0.0.1/test] [--rows 20000] [--inserts 200]

1. Lag: a worker (``superduper start``, polling every 0.1 s) runs in its own process; another client inserts one row
   at a time with plain SQL, and the time from its commit until the row's output can be read is measured (median
   and p95). Goal: median <= 1 s.
2. Throughput: N rows inserted with plain SQL (recorded by the triggers), then followed by ``db.changes.consume()``
   with a trivial model, against a raw SQLAlchemy loop doing the same reads and writes on a queue table of its own
   (claim 1,000 queue rows with FOR UPDATE SKIP LOCKED, read their source rows, compute, upsert the outputs, delete
   the queue rows). Rows per second for both, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import sqlalchemy as sa

from superduper import ObjectModel, Table, superduper


def double(n: int) -> int:
    return 2 * n


def measure_lag(db, uri: str, listener, inserts: int, env: dict) -> list[float]:
    worker = subprocess.Popen([sys.executable, '-m', 'superduper.cli', 'start', uri, '--interval', '0.1'], env=env)
    engine = sa.create_engine(db.databackend.engine.url)
    out = sa.table(listener.outputs, sa.column('_source'))
    lags = []
    try:
        time.sleep(2)  # the worker connects
        for i in range(inserts):
            with engine.begin() as conn:
                conn.execute(sa.text('INSERT INTO lag_src (id, n) VALUES (:id, :n)'), {'id': f'l{i}', 'n': i})
            committed = time.perf_counter()
            with engine.connect() as conn:
                while not conn.execute(sa.select(out.c._source).where(out.c._source == f'l{i}')).first():
                    conn.rollback()
                    time.sleep(0.002)
            lags.append(time.perf_counter() - committed)
    finally:
        worker.terminate()
        worker.wait()
        engine.dispose()
    return lags


def ours(db, rows: int) -> float:
    db.apply(Table('tp_src', fields={'n': 'int'}, folds=False))
    listener = db.apply(ObjectModel('tp', object=double).to_listener('tp_src', key='n', identifier='tp'))
    with db.databackend.engine.begin() as conn:
        conn.execute(sa.text('INSERT INTO tp_src (id, n) VALUES (:id, :n)'), [{'id': f't{i}', 'n': i} for i in range(rows)])
    start = time.perf_counter()
    while db.changes.consume(1000):
        pass
    elapsed = time.perf_counter() - start
    assert db.databackend.count(listener.outputs) == rows
    return elapsed


def raw_loop(db, rows: int) -> float:
    from sqlalchemy.dialects.postgresql import insert

    engine = db.databackend.engine
    meta = sa.MetaData()
    src = sa.Table('raw_src', meta, sa.Column('id', sa.String(255), primary_key=True), sa.Column('n', sa.BigInteger))
    queue = sa.Table('raw_queue', meta, sa.Column('id', sa.BigInteger, primary_key=True, autoincrement=True),
                     sa.Column('source', sa.String(255)))
    out = sa.Table('raw_out', meta, sa.Column('_source', sa.String(255), primary_key=True), sa.Column('v', sa.BigInteger))
    meta.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(src.insert(), [{'id': f't{i}', 'n': i} for i in range(rows)])
            conn.execute(queue.insert(), [{'source': f't{i}'} for i in range(rows)])
        start = time.perf_counter()
        while True:
            with engine.begin() as conn:
                claimed = conn.execute(sa.select(queue.c.id, queue.c.source).order_by(queue.c.id).limit(1000)
                                       .with_for_update(skip_locked=True)).all()
                if not claimed:
                    break
                values = conn.execute(sa.select(src.c.id, src.c.n).where(src.c.id.in_([c.source for c in claimed]))).all()
                stmt = insert(out)
                conn.execute(stmt.on_conflict_do_update(index_elements=['_source'], set_={'v': stmt.excluded.v}),
                             [{'_source': i, 'v': double(n)} for i, n in values])
                conn.execute(queue.delete().where(queue.c.id.in_([c.id for c in claimed])))
        return time.perf_counter() - start
    finally:
        meta.drop_all(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--uri', default='postgresql://postgres@127.0.0.1/test')
    parser.add_argument('--rows', type=int, default=20_000)
    parser.add_argument('--inserts', type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, 'SUPERDUPER_ARTIFACT_STORE': f'filesystem://{tmp}/artifacts', 'SUPERDUPER_PROGRESS': 'false'}
        db = superduper(args.uri, artifact_store=f'filesystem://{tmp}/artifacts', progress=False, follow_changes=False)
        try:
            db.apply(Table('lag_src', fields={'n': 'int'}, folds=False))
            listener = db.apply(ObjectModel('lag', object=double).to_listener('lag_src', key='n', identifier='lag'))
            lags = sorted(measure_lag(db, args.uri, listener, args.inserts, env))
            print(f'lag plain-SQL insert -> output readable ({len(lags)} inserts, worker polling every 0.1 s): '
                  f'median {statistics.median(lags) * 1000:.0f} ms, p95 {lags[int(0.95 * len(lags))] * 1000:.0f} ms '
                  '(goal: median <= 1 s)')
            mine, raw = ours(db, args.rows), raw_loop(db, args.rows)
            print(f'throughput, trivial model, {args.rows} rows: superduper {args.rows / mine:.0f} rows/s, raw SQLAlchemy '
                  f'loop {args.rows / raw:.0f} rows/s, time ratio {mine / raw:.2f}x')
        finally:
            for name in ('lag', 'tp'):
                if name in db.show('Listener'):
                    db.remove('Listener', name, recursive=True)
            for table in ('lag_src', 'tp_src'):
                if table in db.show('Table'):
                    db.remove('Table', table)
            with db.databackend.begin() as conn:
                conn.exec_driver_sql('DROP TABLE IF EXISTS _superduper_changes')
            db.metadata.drop()
            db.close()


if __name__ == '__main__':
    main()
