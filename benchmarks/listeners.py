"""Listeners: backfill speed against raw SQLAlchemy Core, single-insert latency, and memory during a backfill.

    PYTHONPATH=. python benchmarks/listeners.py [--rows 100000] [--repeats 3] [--backends sqlite,postgresql]

1. Backfill of N rows with a trivial model (``str.upper``), on a table already holding the rows (inserted before the
   timer on both sides):
   - superduper: ``db.apply(listener)``: stores the listener, makes its outputs table, follows the table (triggers),
     queues the rows, then leases them in batches, reads them by key, computes, and stores the outputs under the
     stamp guard, with a job record;
   - SQLAlchemy Core: makes an outputs table, streams the N source rows out of the database (2,000 a fetch),
     computes ``upper`` on each, and upserts the N outputs keyed by the source row (executemany, one transaction) -
     what a program without superduper does for the same result.
   Target: <= 2x. Medians of --repeats runs.
2. ``insert_one`` into a SQLite table followed by one listener: median and p95 over 500 inserts. Target: median
   <= 5 ms (the project the seeds describe takes about 215 ms).
3. Peak RSS growth during the N-row backfill on SQLite, measured in a fresh process (VmHWM after the backfill
   minus VmRSS before it, with the high-water mark reset first). Target: < 200 MB.

Times are never asserted on; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import sqlalchemy as sa

from superduper import ObjectModel, Table, superduper

URIS = {
    'sqlite': 'sqlite://{tmp}/bench.db',
    'postgresql': 'postgresql://postgres@127.0.0.1/test',
    'mysql': 'mysql://root@127.0.0.1/test',
}


def rows_for(n: int) -> list[dict]:
    return [{'txt': f'text number {i}'} for i in range(n)]


def upper(x: str) -> str:
    return x.upper()


def time_backfill(db, n: int) -> float:
    db.apply(Table('bench_src', fields={'txt': 'str'}, folds=False))
    db['bench_src'].insert(rows_for(n)).execute()
    listener = ObjectModel('bench_upper', object=upper).to_listener('bench_src', key='txt', identifier='bench_upper')
    start = time.perf_counter()
    db.apply(listener)
    elapsed = time.perf_counter() - start
    assert db[listener.outputs].count().execute() == n
    db.remove('Listener', 'bench_upper', recursive=True)
    db.remove('Table', 'bench_src')
    return elapsed


def time_core(db, n: int) -> float:
    """The same backfill written on SQLAlchemy Core: read the rows, compute, upsert the outputs (timed)."""
    engine = db.databackend.engine
    meta = sa.MetaData()
    src = sa.Table('bench_core_src', meta, sa.Column('id', sa.String(255), primary_key=True), sa.Column('txt', sa.Text))
    out = sa.Table('bench_core_out', sa.MetaData(), sa.Column('_source', sa.String(255), primary_key=True),
                   sa.Column('output', sa.Text))
    meta.create_all(engine)
    with engine.begin() as conn:  # the source rows exist before the timer, as on the superduper side
        conn.execute(src.insert(), [{'id': uuid.uuid4().hex, **r} for r in rows_for(n)])
    try:
        start = time.perf_counter()
        out.create(engine)
        with engine.begin() as write, engine.connect() as read:
            result = read.execution_options(stream_results=True, yield_per=2000).execute(sa.select(src.c.id, src.c.txt))
            for batch in result.partitions(2000):
                write.execute(upsert(engine, out), [{'_source': i, 'output': upper(t)} for i, t in batch])
        return time.perf_counter() - start
    finally:
        out.drop(engine, checkfirst=True)
        meta.drop_all(engine)


def upsert(engine, table: sa.Table):
    """``INSERT ... ON CONFLICT`` in the engine's dialect, as superduper writes outputs."""
    if engine.dialect.name in ('mysql', 'mariadb'):
        from sqlalchemy.dialects.mysql import insert

        stmt = insert(table)
        return stmt.on_duplicate_key_update(output=stmt.inserted.output)
    module = 'sqlite' if engine.dialect.name == 'sqlite' else 'postgresql'
    stmt = __import__(f'sqlalchemy.dialects.{module}', fromlist=['insert']).insert(table)
    return stmt.on_conflict_do_update(index_elements=['_source'], set_={'output': stmt.excluded.output})


def single_insert_latency(tmp: str, inserts: int = 500) -> tuple[float, float]:
    db = superduper(f'sqlite://{tmp}/latency.db', artifact_store=f'filesystem://{tmp}/latency-artifacts', progress=False)
    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert(rows_for(1000)).execute()
    db.apply(ObjectModel('upper', object=upper).to_listener('docs', key='txt'))
    times = []
    for i in range(inserts):
        start = time.perf_counter()
        db['docs'].insert_one({'txt': f'new {i}'}).execute()
        times.append(time.perf_counter() - start)
    db.close()
    times.sort()
    return statistics.median(times) * 1000, times[int(0.95 * len(times))] * 1000


MEMORY_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from benchmarks.listeners import rows_for, upper
from superduper import ObjectModel, Table, superduper

def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

db = superduper('sqlite://{tmp}/memory.db', artifact_store='filesystem://{tmp}/memory-artifacts', progress=False)
db.apply(Table('docs', fields={{'txt': 'str'}}, folds=False))
for start in range(0, {n}, 10000):
    db['docs'].insert(rows_for(min(10000, {n} - start))).execute()
before = status('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')  # reset the high-water mark
db.apply(ObjectModel('upper', object=upper).to_listener('docs', key='txt'))
print(json.dumps({{'before': before, 'peak': status('VmHWM')}}))
"""


def backfill_memory(tmp: str, n: int, repo: str) -> float:
    script = MEMORY_SCRIPT.format(repo=repo, tmp=tmp, n=n)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return (figures['peak'] - figures['before']) / 2**20


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--backends', default='sqlite,postgresql')
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(','):
            db = superduper(URIS[backend].format(tmp=tmp), artifact_store=f'filesystem://{tmp}/artifacts',
                            home=f'{tmp}/home', progress=False)
            ours, core = [], []
            for _ in range(args.repeats):
                ours.append(time_backfill(db, args.rows))
                core.append(time_core(db, args.rows))
            db.metadata.drop()
            db.close()
            o, c = statistics.median(ours), statistics.median(core)
            lines.append(f'{backend:10s} backfill {args.rows} rows: superduper {o:.2f}s, Core read+compute+upsert {c:.2f}s, '
                         f'ratio {o / c:.2f}x (target <= 2x)')
        median, p95 = single_insert_latency(tmp)
        lines.append(f'sqlite     insert_one with one listener: median {median:.2f} ms, p95 {p95:.2f} ms (target median <= 5 ms)')
        growth = backfill_memory(tmp, args.rows, repo)
        lines.append(f'sqlite     peak RSS growth during a {args.rows}-row backfill: {growth:.0f} MB (target < 200 MB)')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
