"""Change capture on a folder of Delta tables (``parquet://``, ``change_capture='versions'``): the cost of a poll, and
the lag from another program's append to its stored output.

    python benchmarks/lake_versions.py [--rows 100000] [--writes 20] [--repeats 7]

Setup: a Delta table ``docs`` of ``--rows`` rows (id int, txt str) and a listener upper-casing ``txt`` (its backfill
runs first and is not timed).

1. Poll, median of ``--repeats``:
   - idle (nothing committed since the last poll): superduper's ``VersionFeed`` looks for the next log entry of the
     table (one file that is not there) and the seen version in the state database;
   - after one append of one row by another program: the feed reads that commit's log entry and the one Parquet
     file it added, and hands out the row's key (the batch is given back, not computed, and the feed's memory of
     the version dropped, so each repeat reads the commit again);
   - the floor of what a poll of all keys must do (the project the seeds describe re-reads every id each time):
     DuckDB reading every ``id`` of the table's current files. The ratios say what reading versions saves.
2. Lag: with the background consumer polling every ``poll_interval`` (0.5 s, the default, and 0.1 s), another process
   appends one row with ``deltalake`` ``--writes`` times, one at a time; the time from its commit until the row's
   output can be read through superduper, median and max.

Times are never asserted on; the machine is shared, so read the ratios and medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from benchmarks.polling import median_time
from superduper import ObjectModel, superduper


def setup(folder: str, rows: int, interval: float, follow: bool):
    if not os.path.exists(os.path.join(folder, 'docs')):
        write_deltalake(os.path.join(folder, 'docs'),
                        pa.table({'id': list(range(rows)), 'txt': [f'text {i}' for i in range(rows)]}))
    db = superduper(f'parquet://{folder}', artifact_store=f'filesystem://{folder}.artifacts', progress=False,
                    poll_interval=interval, follow_changes=follow)
    if not db.show('Listener'):
        db.apply(ObjectModel('upper', object=str.upper).to_listener('docs', key='txt', identifier='upper'))
    return db, db.load('Listener', 'upper')


def append(folder: str, key: int) -> None:
    write_deltalake(os.path.join(folder, 'docs'), pa.table({'id': [key], 'txt': [f'new {key}']}), mode='append')


def polls(folder: str, rows: int, repeats: int) -> None:
    import duckdb

    db, _ = setup(folder, rows, 0.5, follow=False)
    feed = db.changes

    def poll_appended() -> None:
        batch = feed.claim(1000)
        assert batch is not None and len(batch.changes) == 1
        feed.release(batch)
        feed._found.clear()  # forget the version read: the next poll reads its commit again

    idle = median_time(lambda: feed.claim(1000), repeats)
    append(folder, rows + 1)
    one = median_time(poll_appended, repeats)
    files = DeltaTable(os.path.join(folder, 'docs')).file_uris()
    floor = median_time(lambda: duckdb.sql(f'SELECT id FROM read_parquet({files!r})').fetchall(), repeats)
    db.close()
    print(f'poll, {rows:,} rows: idle {idle * 1e3:.2f} ms; after a one-row append {one * 1e3:.2f} ms; '
          f'reading every id (DuckDB alone) {floor * 1e3:.2f} ms = {floor / one:.0f}x a poll after an append, '
          f'{floor / idle:.0f}x an idle one')


def lag(folder: str, rows: int, writes: int, interval: float) -> None:
    db, listener = setup(folder, rows, interval, follow=True)
    outputs = db[listener.outputs]
    lags = []
    for i in range(writes):
        key = 10**9 + int(interval * 1000) * 1000 + i
        subprocess.run([sys.executable, '-c', f'from benchmarks.lake_versions import append; '
                        f'append({folder!r}, {key})'], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        committed = time.perf_counter()
        while outputs.filter(outputs['_source'] == key).count().execute() == 0:
            time.sleep(0.005)
        lags.append(time.perf_counter() - committed)
    db.close()
    print(f'lag at poll_interval={interval}s, {writes} appends by another process: median '
          f'{statistics.median(lags) * 1e3:.0f} ms, max {max(lags) * 1e3:.0f} ms')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--writes', type=int, default=20)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        polls(folder, args.rows, args.repeats)
        for interval in (0.5, 0.1):
            lag(folder, args.rows, args.writes, interval)


if __name__ == '__main__':
    main()
