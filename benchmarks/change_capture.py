"""Change capture under load: plain-SQL writers, two workers, against a raw SKIP LOCKED queue doing the same work.

    python benchmarks/change_capture.py [--uri postgresql://postgres@127.0.0.1/test] [--writers 4] [--rows 5000]
                                        [--rate 1000] [--repeats 3]

Both sides, in the same run, alternating (``--repeats`` times; medians reported):

* ``--writers`` processes insert ``--rows`` rows each, 50 rows a transaction, with plain SQL (SQLAlchemy Core, no
  superduper); a trigger records every inserted row in a queue table, in the writer's transaction.
* Two worker processes follow the queue: claim a batch of up to 1,000 queued rows (``FOR UPDATE SKIP LOCKED``), read
  the source rows, compute ``2 * n``, upsert the outputs, delete the queued rows.
  - superduper: ``superduper start`` with a listener on the table (``ObjectModel(lambda n: 2 * n)``); its triggers,
    change table, leases (claim, commit, compute outside any transaction, store under a stamp guard, release) and
    per-row state are what is measured.
  - raw: a loop written directly on SQLAlchemy Core, the whole batch in one transaction holding the row locks (no
    lease, no guard against an older result overwriting a newer one, no failure records), under READ COMMITTED
    as superduper's workers (the writers keep the database's default isolation on both sides).
  Both poll every 0.05 s when idle.

Figures:

1. Throughput: the writers run flat out; time from the start until every output is stored; rows per second on each
   side and the ratio superduper / raw (goal: >= 0.7).
2. Lag: the writers are paced to ``--rate`` rows per second in all; for every row, the time from its writer's commit to
   its output being stored (superduper: the stamp's time in ``_superduper_stamps``; raw: a ``stored_at`` column
   written with the output, both on the database's clock); median and p95 (goal: p95 <= 2 s).
3. Lost, duplicated and stale outputs on each side (must be 0).

Times are never asserted on; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import sqlalchemy as sa

from superduper import ObjectModel, Table, superduper

WRITER = r'''
import json, sys, time
import sqlalchemy as sa
url, table, me, rows, rate, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
engine = sa.create_engine(url)
insert = sa.text(f'INSERT INTO {table} (id, n) VALUES (:id, :n)')
epoch = {'postgresql': 'SELECT extract(epoch from clock_timestamp())', 'mysql': 'SELECT UNIX_TIMESTAMP(NOW(6))',
         'mariadb': 'SELECT UNIX_TIMESTAMP(NOW(6))'}[engine.dialect.name]
commits, start = [], time.perf_counter()
for first in range(0, rows, 50):
    with engine.begin() as conn:
        conn.execute(insert, [{'id': f'w{me}-{i:06d}', 'n': me * 1_000_000 + i} for i in range(first, min(rows, first + 50))])
    with engine.connect() as conn:
        commits.append((first, float(conn.execute(sa.text(epoch)).scalar())))
    if rate:
        time.sleep(max(0.0, start + (first + 50) / rate - time.perf_counter()))
json.dump(commits, open(out, 'w'))
'''

RAW_WORKER = r'''
import sys, time
import sqlalchemy as sa
url = sys.argv[1]
# READ COMMITTED, as superduper's workers: under MySQL's default the queue's gap locks deadlock the writers
engine = sa.create_engine(url, isolation_level='READ COMMITTED')
meta = sa.MetaData()
src = sa.Table('raw_src', meta, autoload_with=engine)
queue = sa.Table('raw_queue', meta, autoload_with=engine)
out = sa.Table('raw_out', meta, autoload_with=engine)
epoch = sa.literal_column({'postgresql': 'extract(epoch from clock_timestamp())'}.get(engine.dialect.name, 'UNIX_TIMESTAMP(NOW(6))'))
if engine.dialect.name == 'postgresql':
    from sqlalchemy.dialects.postgresql import insert
    stmt = insert(out)
    upsert = stmt.on_conflict_do_update(index_elements=['_source'], set_={'v': stmt.excluded.v, 'stored_at': epoch})
else:
    from sqlalchemy.dialects.mysql import insert
    stmt = insert(out)
    upsert = stmt.on_duplicate_key_update(v=stmt.inserted.v, stored_at=epoch)
while True:
    try:
        with engine.begin() as conn:
            claimed = conn.execute(sa.select(queue.c.id, queue.c.source).order_by(queue.c.id).limit(1000)
                                   .with_for_update(skip_locked=True)).all()
            if claimed:
                rows = conn.execute(sa.select(src.c.id, src.c.n).where(src.c.id.in_([c.source for c in claimed]))).all()
                if rows:
                    conn.execute(upsert.values(stored_at=epoch), [{'_source': i, 'v': 2 * n} for i, n in rows])
                conn.execute(queue.delete().where(queue.c.id.in_([c.id for c in claimed])))
    except sa.exc.OperationalError as e:  # MySQL breaks a deadlock with the writers' inserts: run it again
        if 'Deadlock' not in str(e):
            raise
        continue
    if not claimed:
        time.sleep(0.05)
'''


def double(n: int) -> int:
    return 2 * n


def run_writers(url: str, table: str, writers: int, rows: int, rate: float, tmp: str) -> dict[str, float]:
    """Run the writers to the end; the commit time (database clock) of every row key."""
    files = [os.path.join(tmp, f'commits-{table}-{k}.json') for k in range(writers)]
    procs = [subprocess.Popen([sys.executable, '-c', WRITER, url, table, str(k), str(rows), str(rate / writers), f])
             for k, f in enumerate(files)]
    assert [p.wait() for p in procs] == [0] * writers
    committed = {}
    for k, f in enumerate(files):
        for first, at in json.load(open(f)):
            for i in range(first, min(rows, first + 50)):
                committed[f'w{k}-{i:06d}'] = at
    return committed


def wait_for(count, total: int, timeout: float = 600) -> float:
    deadline = time.time() + timeout
    while count() < total:
        if time.time() > deadline:
            raise RuntimeError(f'only {count()} of {total} outputs after {timeout} s')
        time.sleep(0.02)
    return time.perf_counter()


def check(engine, table: str, outputs: str, column: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text(f'SELECT id, n FROM {table}')).all())
        found = conn.execute(sa.text(f'SELECT _source, {column} FROM {outputs}')).all()
    seen: dict = {}
    duplicated = 0
    for source, value in found:
        duplicated += source in seen
        seen[source] = value
    return {'lost': sum(k not in seen for k in rows), 'duplicated': duplicated,
            'stale': sum(k not in rows or v != 2 * rows[k] for k, v in seen.items())}


def lags(engine, sql: str, committed: dict[str, float]) -> list[float]:
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text(sql)).all())
    return sorted(max(0.0, float(stored[k]) - at) for k, at in committed.items() if k in stored)


# ---- superduper -------------------------------------------------------------------------------------------------
def ours(uri: str, args: argparse.Namespace, rate: float, tmp: str) -> dict:
    env = {**os.environ, 'SUPERDUPER_ARTIFACT_STORE': f'filesystem://{tmp}/artifacts', 'SUPERDUPER_PROGRESS': 'false'}
    db = superduper(uri, artifact_store=f'filesystem://{tmp}/artifacts', progress=False, follow_changes=False)
    total = args.writers * args.rows
    try:
        db.apply(Table('cc_src', fields={'n': 'int'}, folds=False))
        listener = db.apply(ObjectModel('cc_double', object=double, datatype='int').to_listener(
            'cc_src', key='n', identifier='cc_double'))
        workers = [subprocess.Popen([sys.executable, '-m', 'superduper.cli', 'start', uri, '--interval', '0.05'],
                                    env=env) for _ in range(2)]
        try:
            time.sleep(2)  # the workers have connected and loaded the listener
            url = db.databackend.engine.url.render_as_string(hide_password=False)
            start = time.perf_counter()
            committed = run_writers(url, 'cc_src', args.writers, args.rows, rate, tmp)
            done = wait_for(lambda: db.databackend.count(listener.outputs), total)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait()
        engine = db.databackend.engine
        result = {'seconds': done - start, **check(engine, 'cc_src', listener.outputs, listener.outputs)}
        result['lags'] = lags(engine, f"SELECT source, at FROM _superduper_stamps WHERE listener = '{listener.uuid}'",
                              committed)
        return result
    finally:
        for name in ('cc_double',):
            if name in db.show('Listener'):
                db.remove('Listener', name, recursive=True)
        if 'cc_src' in db.show('Table'):
            db.remove('Table', 'cc_src', force=True)
        with db.databackend.begin() as conn:
            for table in ('_superduper_change_log', '_superduper_claims', '_superduper_stamps'):
                conn.exec_driver_sql(f'DROP TABLE IF EXISTS {table}')
        db.metadata.drop()
        db.close()


# ---- raw ------------------------------------------------------------------------------------------------------------
def raw(uri: str, args: argparse.Namespace, rate: float, tmp: str) -> dict:
    db = superduper(uri, progress=False, follow_changes=False)
    engine = db.databackend.engine
    url = engine.url.render_as_string(hide_password=False)
    total = args.writers * args.rows
    meta = sa.MetaData()
    sa.Table('raw_src', meta, sa.Column('id', sa.String(255), primary_key=True), sa.Column('n', sa.BigInteger))
    sa.Table('raw_queue', meta, sa.Column('id', sa.BigInteger, primary_key=True, autoincrement=True),
             sa.Column('source', sa.String(255), nullable=False))
    sa.Table('raw_out', meta, sa.Column('_source', sa.String(255), primary_key=True), sa.Column('v', sa.BigInteger),
             sa.Column('stored_at', sa.Double))
    meta.drop_all(engine)
    meta.create_all(engine)
    with engine.begin() as conn:
        if engine.dialect.name == 'postgresql':  # statement-level, as superduper's
            conn.exec_driver_sql('CREATE FUNCTION raw_capture() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
                                 'INSERT INTO raw_queue (source) SELECT id FROM new_rows; RETURN NULL; END $$')
            conn.exec_driver_sql('CREATE TRIGGER raw_capture AFTER INSERT ON raw_src REFERENCING NEW TABLE AS '
                                 'new_rows FOR EACH STATEMENT EXECUTE FUNCTION raw_capture()')
        else:  # row-level, as superduper's
            conn.exec_driver_sql('CREATE TRIGGER raw_capture AFTER INSERT ON raw_src FOR EACH ROW '
                                 'INSERT INTO raw_queue (source) VALUES (NEW.id)')
    try:
        workers = [subprocess.Popen([sys.executable, '-c', RAW_WORKER, url]) for _ in range(2)]
        try:
            time.sleep(2)
            start = time.perf_counter()
            committed = run_writers(url, 'raw_src', args.writers, args.rows, rate, tmp)
            done = wait_for(lambda: db.databackend.count('raw_out'), total)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait()
        result = {'seconds': done - start, **check(engine, 'raw_src', 'raw_out', 'v')}
        result['lags'] = lags(engine, 'SELECT _source, stored_at FROM raw_out', committed)
        return result
    finally:
        with engine.begin() as conn:
            if engine.dialect.name == 'postgresql':
                conn.exec_driver_sql('DROP TRIGGER IF EXISTS raw_capture ON raw_src')
                conn.exec_driver_sql('DROP FUNCTION IF EXISTS raw_capture()')
        meta.drop_all(engine)
        db.metadata.drop()
        db.close()


def p95(values: list[float]) -> float:
    return values[min(len(values) - 1, int(0.95 * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--uri', default='postgresql://postgres@127.0.0.1/test')
    parser.add_argument('--writers', type=int, default=4)
    parser.add_argument('--rows', type=int, default=5000, help='rows per writer')
    parser.add_argument('--rate', type=float, default=1000, help='rows per second in all, for the lag figure')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    total = args.writers * args.rows
    figures: dict[str, dict[str, list]] = {'superduper': {}, 'raw': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, side in (('raw', raw), ('superduper', ours)):
                for phase, rate in (('flat out', 0.0), ('paced', args.rate)):
                    result = side(args.uri, args, rate, tmp)
                    got = figures[name].setdefault(phase, [])
                    got.append(result)
                    faults = {k: result[k] for k in ('lost', 'duplicated', 'stale')}
                    print(f'{name:10} {phase:8} {result["seconds"]:6.2f} s  median lag '
                          f'{statistics.median(result["lags"]) * 1000:6.0f} ms  p95 {p95(result["lags"]) * 1000:6.0f} ms  '
                          f'{faults}', flush=True)
    print(f'\n{args.uri}: {args.writers} plain-SQL writers x {args.rows} rows, 2 workers, medians of {args.repeats}')
    for phase in ('flat out', 'paced'):
        for name in ('raw', 'superduper'):
            runs = figures[name][phase]
            seconds = statistics.median(r['seconds'] for r in runs)
            lag50 = statistics.median(statistics.median(r['lags']) for r in runs)
            lag95 = statistics.median(p95(r['lags']) for r in runs)
            bad = {k: sum(r[k] for r in runs) for k in ('lost', 'duplicated', 'stale')}
            print(f'  {phase:8} {name:10} {total / seconds:8.0f} rows/s  lag median {lag50 * 1000:5.0f} ms  '
                  f'p95 {lag95 * 1000:5.0f} ms  {bad}')
    ratio = statistics.median(r['seconds'] for r in figures['raw']['flat out']) / statistics.median(
        r['seconds'] for r in figures['superduper']['flat out'])
    print(f'  throughput superduper / raw: {ratio:.2f}x (goal >= 0.7); lag p95 paced at {args.rate:.0f} rows/s: '
          f'{statistics.median(p95(r["lags"]) for r in figures["superduper"]["paced"]):.2f} s (goal <= 2 s)')


if __name__ == '__main__':
    main()
