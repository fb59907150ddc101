"""superduper's inserts and reads on the embedded engines against the engine's own Python client, in the same run.

    PYTHONPATH=. python benchmarks/engine_io.py [--rows 100000] [--batch 10000] [--repeats 5] [--backends duckdb,chdb]

The rows: ``id`` (text key, given), ``n`` (int), ``f`` (float), ``txt`` (~50 characters), ``meta`` (a small JSON
dict) and ``ts`` (a datetime), made once as Python dicts. Both sides start from that list and end with the same
Python values, which the script checks once, outside the timings. What each side does (median of --repeats runs,
interleaved, then superduper / engine):

1. insert N rows in batches of --batch, into an empty table (emptied with TRUNCATE outside the timed region):
   - superduper: ``db[t].insert(rows[i:i + batch]).execute()`` into ``Table(t, fields=..., folds=False)``: it
     checks and encodes every value, and on ClickHouse first refuses keys given twice in the batch or stored
     already (a plain insert of an existing key fails there as it does elsewhere; ClickHouse itself enforces no
     key): one query per batch, the batch's keys read from an Arrow file by ClickHouse's ``file`` table function;
   - DuckDB: per batch, a ``pyarrow`` table built from the dicts (``meta`` as ``json.dumps`` text), then
     ``INSERT INTO t SELECT * FROM batch`` (DuckDB scans the Arrow table in place; ``executemany`` of a prepared
     INSERT runs one statement a row and is not what a DuckDB user does), on a connection of ``duckdb.connect``
     to a second file in the same folder;
   - chDB: per batch, the same ``pyarrow`` table written as an Arrow IPC stream and sent with
     ``connection.send_insert('INSERT INTO t', 'ArrowStream')``, on ``chdb.connect`` of superduper's folder
     (chDB runs one engine per process: both clients share it);
   the engine's table is the one superduper creates (the same ``CREATE TABLE``), under another name. The engine
   side looks for no existing or repeated keys (DuckDB enforces its primary key itself; on chDB its client would
   replace the rows silently): superduper's time on chDB includes that check, which its engine side lacks.
2. read all N rows back as Python dicts:
   - superduper: ``list(db[t].select().execute())`` (``Document``s, ``meta`` decoded, ``ts`` a ``datetime``);
   - DuckDB: the cursor's ``SELECT * FROM t`` and ``fetchall()`` (tuples);
   - chDB: ``connection.query('SELECT * FROM t FINAL', 'ArrowTable')`` (``FINAL``, as superduper reads its
     ReplacingMergeTree tables), ``ts`` cast to a naive timestamp, ``to_pydict()`` and the columns zipped into
     tuples (2.5x faster here than chDB's cursor ``fetchall()``, which the script used at first);
   then, on both, ``dict(zip(names, row))`` per row with ``meta`` decoded by ``json.loads``.

Target: <= 1.3x. Snowflake is not measured: fakesnow is DuckDB behind an HTTP emulator that translates every statement,
so its time says nothing about a warehouse (nor about superduper's share of it). The machine may be shared
and noisy: the script reports medians and ratios and never fails on a time; "over" only flags a ratio above target.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from typing import Any

import sqlalchemy as sa

from benchmarks.core_io import medians, nothing
from superduper import Table, superduper

TARGET = 1.3
SD, RAW = 'bench_sd', 'bench_engine'
FIELDS = {'id': 'str', 'n': 'int', 'f': 'float', 'txt': 'str', 'meta': 'json', 'ts': 'datetime'}
URIS = {'duckdb': 'duckdb://{tmp}/sd.duckdb', 'chdb': 'chdb://{tmp}/chdb'}


def make_rows(n: int) -> list[dict]:
    start = datetime.datetime(2024, 1, 1)
    return [
        {'id': f'row-{i:08d}', 'n': i, 'f': i * 0.25, 'txt': f'text number {i:>8} ' + 'x' * 29,
         'meta': {'tag': f't{i % 7}', 'score': i % 100, 'ok': i % 2 == 0},
         'ts': start + datetime.timedelta(seconds=i, microseconds=i % 1000)}
        for i in range(n)
    ]


def arrow_batch(rows: list[dict]) -> Any:
    """The rows as a pyarrow table in the columns' order, ``meta`` as JSON text."""
    import pyarrow as pa

    return pa.table({
        'id': pa.array([r['id'] for r in rows], pa.string()),
        'n': pa.array([r['n'] for r in rows], pa.int64()),
        'f': pa.array([r['f'] for r in rows], pa.float64()),
        'txt': pa.array([r['txt'] for r in rows], pa.string()),
        'meta': pa.array([json.dumps(r['meta']) for r in rows], pa.string()),
        'ts': pa.array([r['ts'] for r in rows], pa.timestamp('us')),
    })


def as_dicts(names: list[str], rows: list[tuple]) -> list[dict]:
    meta = names.index('meta')
    out = []
    for row in rows:
        d = dict(zip(names, row))
        if row[meta] is not None:
            d['meta'] = json.loads(row[meta])
        out.append(d)
    return out


class DuckDBClient:
    """DuckDB's own Python API on a second database file in the same folder."""

    def __init__(self, tmp: str, create_sql: str):
        import duckdb

        self.con = duckdb.connect(f'{tmp}/engine.duckdb')
        self.con.execute(create_sql)

    def insert(self, rows: list[dict]) -> None:
        batch = arrow_batch(rows)  # noqa: F841 (DuckDB finds the Arrow table by its Python name)
        self.con.execute(f'INSERT INTO {RAW} SELECT * FROM batch')

    def read(self) -> list[dict]:
        cursor = self.con.execute(f'SELECT * FROM {RAW}')
        names = [d[0] for d in cursor.description]
        return as_dicts(names, cursor.fetchall())

    def clear(self) -> None:
        self.con.execute(f'TRUNCATE {RAW}')

    def close(self) -> None:
        self.con.close()


class ChdbClient:
    """chDB's own connection on superduper's folder (one engine per process, shared)."""

    def __init__(self, path: str, create_sql: str):
        import chdb

        self.con = chdb.connect(path)
        self.con.query(create_sql)

    def insert(self, rows: list[dict]) -> None:
        import pyarrow as pa

        table = arrow_batch(rows)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        with self.con.send_insert(f'INSERT INTO {RAW}', 'ArrowStream') as inserter:
            inserter.append(sink.getvalue().to_pybytes())
            inserter.finish()

    def read(self) -> list[dict]:
        import pyarrow as pa

        table = self.con.query(f'SELECT * FROM {RAW} FINAL', 'ArrowTable')
        ts = table.schema.get_field_index('ts')  # chDB tags it with the server's zone; the values are naive
        table = table.set_column(ts, 'ts', table.column(ts).cast(pa.timestamp('us')))
        columns = table.to_pydict()
        return as_dicts(list(columns), list(zip(*columns.values())))

    def clear(self) -> None:
        self.con.query(f'TRUNCATE TABLE {RAW}')

    def close(self) -> None:
        self.con.query(f'DROP TABLE IF EXISTS {RAW}')
        self.con.close()


def engine_client(backend: str, db: Any, tmp: str) -> Any:
    """The engine's own client, on a table made by the same ``CREATE TABLE`` as superduper's."""
    databackend = db.databackend
    types = db.load('Table', SD).resolved_schema.types
    create_sql = str(databackend.create_statement(RAW, types, 'id').compile(dialect=databackend.dialect))
    if backend == 'duckdb':
        return DuckDBClient(tmp, create_sql)
    return ChdbClient(databackend._path, create_sql)


def same_values(ours: list[dict], theirs: list[dict]) -> bool:
    key = lambda r: r['id']  # noqa: E731
    return [dict(r) for r in sorted(ours, key=key)] == sorted(theirs, key=key)


def bench_backend(backend: str, uri: str, rows: list[dict], batch: int, repeats: int, tmp: str) -> list[tuple]:
    db = superduper(uri, home=tmp, artifact_store=f'filesystem://{tmp}/artifacts')
    client = None
    try:
        db.apply(Table(SD, fields=FIELDS, folds=False))
        client = engine_client(backend, db, tmp)
        parts = [rows[i : i + batch] for i in range(0, len(rows), batch)]

        def clear_sd() -> None:
            with db.databackend.begin() as conn:
                db.databackend.run_sql(conn, f'TRUNCATE TABLE {db.databackend.sql_name(SD)}')

        def insert_sd() -> None:
            for part in parts:
                db[SD].insert(part).execute()

        def insert_engine() -> None:
            for part in parts:
                client.insert(part)

        def read_sd() -> list:
            return list(db[SD].select().execute())

        # warm up both paths (reflection, statement compilation, imports) outside the timings
        insert_sd()
        insert_engine()
        if not same_values(read_sd(), client.read()):
            print(f'warning: {backend}: superduper and the engine read back different values', file=sys.stderr)
        clear_sd()
        client.clear()

        ins = medians({'sd': (clear_sd, insert_sd), 'engine': (client.clear, insert_engine)}, repeats)
        clear_sd()
        client.clear()
        insert_sd()
        insert_engine()
        counts = {len(read_sd()), len(client.read())}
        if counts != {len(rows)}:
            print(f'warning: {backend}: expected {len(rows)} rows in each table, read {sorted(counts)}',
                  file=sys.stderr)
        read = medians({'sd': (nothing, read_sd), 'engine': (nothing, client.read)}, repeats)
    finally:
        if client is not None:
            client.close()
        db.databackend.drop_table(SD)
        if db.metadata.versions('Table', SD):
            db.remove('Table', SD)
        db.close()
    n = len(rows)
    return [
        (backend, f'insert {n} (batches of {batch})', ins['sd'], ins['engine']),
        (backend, f'read {n} as dicts', read['sd'], read['engine']),
    ]


def report(results: list[tuple]) -> None:
    print(f'{"backend":<9}{"operation":<32}{"superduper s":>13}{"engine s":>10}{"ratio":>8}{"target":>9}  result')
    for backend, op, sd, engine in results:
        ratio = sd / engine
        print(f'{backend:<9}{op:<32}{sd:>13.3f}{engine:>10.3f}{f"{ratio:.2f}x":>8}{f"<={TARGET:.1f}x":>9}  '
              f'{"ok" if ratio <= TARGET else "over"}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--batch', type=int, default=10_000)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--backends', default='duckdb,chdb', help=f'comma-separated, of: {", ".join(URIS)}')
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(',') if b.strip()]
    if unknown := [b for b in backends if b not in URIS]:
        parser.error(f'unknown backend(s) {", ".join(unknown)}; choose from {", ".join(URIS)}')
    import duckdb
    import chdb

    print(f'{args.rows} rows, median of {args.repeats} runs; Python {sys.version.split()[0]}, '
          f'DuckDB {duckdb.__version__}, chDB {chdb.__version__}, SQLAlchemy {sa.__version__}\n')
    rows = make_rows(args.rows)
    results: list[tuple] = []
    for backend in backends:
        tmp = tempfile.mkdtemp(prefix='superduper-engine-io-')
        try:
            results += bench_backend(backend, URIS[backend].format(tmp=tmp), rows, args.batch, args.repeats, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report(results)


if __name__ == '__main__':
    main()
