"""Change capture by polling (DuckDB and ClickHouse files): the cost of one idle poll, and the lag from another
client's write to its stored output.

    python benchmarks/polling.py [--backends duckdb,chdb] [--rows 100000] [--writes 20] [--repeats 7]

Setup, per backend: a table of ``--rows`` rows (id text, n integer, txt text) and a listener computing ``2 * n`` over
the rows with ``n >= 10**9`` (none of the loaded rows, so nothing is backfilled; the poll still hashes every row of
the table, as it must to see any change).

1. Idle poll (nothing changed), ``--repeats`` times, median:
   - superduper: ``PollingFeed`` looks for differences: one query, run by the engine, hashing every row of the table
     (DuckDB ``hash``, ClickHouse ``cityHash64`` of all columns) and outer-joining the keys and hashes with the
     seen table, returning none; through SQLAlchemy and the database's driver.
   - engine alone: the engine's own client (``duckdb`` / chDB's session) runs the least any row-hash comparison
     must do: hash every row and sum the hashes (``SELECT sum(hash(...))``), no join, no seen table. The ratio says
     what the join and the seen table add to that floor.
   - superduper with ``poll_by={'docs': 'n'}`` (``n`` playing a version every write raises): one ``max(n)``, the
     rows with ``n`` at least the mark (none) hashed and joined with the seen table, and the seen keys anti-joined
     with the table's keys (deletes); the same engine floor, and the ratio to the full poll above.
2. Lag: with the background consumer polling every ``poll_interval`` (0.5 s, the default, and 0.1 s), another
   connection inserts one row with plain SQL ``--writes`` times, one at a time; the time from its commit until
   the row's output can be read, median and max; again with ``poll_by`` at 0.1 s.

Times are never asserted on; the machine is shared, so read the ratios and medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import sqlalchemy as sa

from superduper import ObjectModel, Table, superduper

FIRST_LAG_ID = 10**9


def double(n: int) -> int:
    return 2 * n


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load(db, rows: int) -> None:
    db.apply(Table('docs', fields={'n': 'int', 'txt': 'str'}, folds=False))
    for first in range(0, rows, 10_000):
        db['docs'].insert([{'id': f'r{i:07d}', 'n': i, 'txt': f'text {i}'}
                           for i in range(first, min(rows, first + 10_000))]).execute()
    t = db['docs']
    db.apply(ObjectModel('double', object=double, datatype='int').to_listener(
        t.filter(t['n'] >= FIRST_LAG_ID), key='n', identifier='double'))


def engine_floor(backend: str, db) -> callable:
    """The engine's own client hashing every row (see the docstring), on the database's open connection."""
    raw = db.databackend.engine.raw_connection()
    if backend == 'duckdb':
        sql = 'SELECT sum(hash(id, n, txt)) FROM docs'
    else:
        sql = 'SELECT sum(cityHash64(tuple(id, n, txt))) FROM docs FINAL'

    def run() -> None:
        cursor = raw.cursor()
        cursor.execute(sql)
        cursor.fetchall()
        cursor.close()

    return run, raw


def idle_poll(db, repeats: int, backend: str) -> dict:
    feed = db.changes
    assert feed._differences('docs', 1000) == [], 'the table should be fully seen'
    ours = median_time(lambda: feed._differences('docs', 1000), repeats)
    floor, raw = engine_floor(backend, db)
    try:
        theirs = median_time(floor, repeats)
    finally:
        raw.close()
    feed._poll_by, feed._lookback = {'docs': 'n'}, 1e-9  # every poll uses the mark the one before recorded
    assert feed._polled_differences('docs', 1000) == [] and feed._polled_differences('docs', 1000) == []
    by_column = median_time(lambda: feed._polled_differences('docs', 1000), repeats)
    feed._poll_by = {}
    return {'idle poll (s)': ours, 'engine hashing every row (s)': theirs, 'ratio': ours / theirs,
            'idle poll with poll_by (s)': by_column, 'poll_by ratio to the engine': by_column / theirs,
            'poll_by ratio to the full poll': by_column / ours}


def lag(uri: str, folder: str, writes: int, interval: float, **settings) -> dict:
    db = superduper(uri, artifact_store=f'filesystem://{folder}/artifacts', progress=False, follow_changes=True,
                    poll_interval=interval, **settings)
    other = sa.create_engine(db.databackend.engine.url, **db.databackend.engine_options())
    listener = db.load('Listener', 'double')
    lags = []
    try:
        for i in range(writes):
            key = f'lag{interval}{"-by" * bool(settings)}-{i}'
            with other.begin() as conn:
                conn.execute(sa.text('INSERT INTO docs (id, n, txt) VALUES (:id, :n, :t)'),
                             {'id': key, 'n': FIRST_LAG_ID + i + 1000 * bool(settings), 't': 'new'})
            committed = time.perf_counter()
            while db[listener.outputs].get(_source=key).execute() is None:
                time.sleep(0.005)
                if time.perf_counter() - committed > 30:
                    raise TimeoutError(f'no output for {key} after 30 s')
            lags.append(time.perf_counter() - committed)
            time.sleep(interval * (i % 3) / 3)  # writes land at different points of the poll cycle
    finally:
        other.dispose()
        db.close()
    how = f'poll_interval={interval} s' + (', poll_by' if settings else '')
    return {f'lag at {how}: median (s)': statistics.median(lags), f'lag at {how}: max (s)': max(lags)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backends', default='duckdb,chdb')
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--writes', type=int, default=20)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    for backend in args.backends.split(','):
        folder = tempfile.mkdtemp()
        uri = f'duckdb://{folder}/bench.duckdb' if backend == 'duckdb' else f'chdb://{folder}/bench'
        db = superduper(uri, artifact_store=f'filesystem://{folder}/artifacts', progress=False, follow_changes=False)
        try:
            load(db, args.rows)
            figures = idle_poll(db, args.repeats, backend)
        finally:
            db.close()
        for interval in (0.5, 0.1):
            figures.update(lag(uri, folder, args.writes, interval))
        figures.update(lag(uri, folder, args.writes, 0.1, poll_by={'docs': 'n'}, poll_lookback=0.5))
        print(f'{backend}, {args.rows:,} rows')
        for name, value in figures.items():
            print(f'  {name:<52} {value:8.4f}')


if __name__ == '__main__':
    main()
