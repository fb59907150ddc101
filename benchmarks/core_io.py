"""superduper's core I/O against raw SQLAlchemy Core doing the same work, in the same run.

    python benchmarks/core_io.py [--rows 100000] [--repeats 5] [--backends sqlite,postgresql]

Backends: sqlite, postgresql (postgres@127.0.0.1/test), mysql (root@127.0.0.1/test, MariaDB too), duckdb and chdb;
SQLite and DuckDB files go in a temporary folder, and a server database that does not exist is created for the
run and dropped after it. What is measured (the median of --repeats runs of each, then superduper / Core):

1. insert N rows: ``db[t].insert(rows).execute()`` with rows without ids (superduper generates them, as in
   real use), and again with the ids given, against ``conn.execute(table.insert(), rows)`` (executemany) of
   the same rows with precomputed uuid4 ids into an identical table in the same database. Tables are emptied
   with DELETE between runs, outside the timed region. Target: <= 1.3x.
2. read all N rows: ``db[t].select().execute().tolist()`` (Documents) against Core's
   ``conn.execute(sa.select(table)).all()`` (tuples) and ``.mappings().all()`` (dict-like rows, the
   like-for-like output). Target: <= 1.5x.
3. ``import superduper``: the cumulative time of ``superduper`` reported by ``python -X importtime``, and the
   wall time of ``python -c 'import superduper'`` minus ``python -c pass``. Target: <= 0.3 s.

The machine may be shared and noisy: the script reports medians and ratios and never fails on a time; "over"
only flags a ratio above its target. Every table it creates is dropped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import sqlalchemy as sa

from superduper import Table, superduper
from superduper.base.exceptions import SuperduperError

URIS = {
    'sqlite': 'sqlite:///{tmp}/bench.db',
    'postgresql': 'postgresql://postgres@127.0.0.1/test',
    'mysql': 'mysql://root@127.0.0.1/test',
    'duckdb': 'duckdb:///{tmp}/bench.duckdb',
    'chdb': 'chdb://{tmp}/bench.chdb',  # ClickHouse in process; Core goes through the same clickhouse-connect dialect
}
# how to reach a server without the benchmark database, to create it when missing: (driver, database)
ADMIN = {'postgresql': ('postgresql+psycopg', 'postgres'), 'mysql': ('mysql+pymysql', 'information_schema')}
EXISTS = {
    'postgresql': 'SELECT 1 FROM pg_database WHERE datname = :name',
    'mysql': 'SELECT 1 FROM information_schema.schemata WHERE schema_name = :name',
}
SD, CORE = 'bench_sd', 'bench_core'
FIELDS = {'txt': 'str', 'n': 'int', 'f': 'float'}
INSERT_TARGET, READ_TARGET, IMPORT_TARGET = 1.3, 1.5, 0.3


def timed(fn) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def nothing() -> None:
    pass


def medians(cases: dict, repeats: int) -> dict[str, float]:
    """Run each case ``(setup, fn)`` ``repeats`` times, interleaved, order flipped every round; median seconds."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            setup, fn = cases[name]
            setup()
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def server_database(backend: str, uri: str):
    """Create the server database when missing; return a function dropping it again (or None)."""
    if backend not in ADMIN:
        return None
    url = sa.engine.make_url(uri)
    driver, admin_db = ADMIN[backend]
    admin = sa.create_engine(url.set(drivername=driver, database=admin_db), isolation_level='AUTOCOMMIT',
                             poolclass=sa.pool.NullPool)
    quoted = admin.dialect.identifier_preparer.quote(url.database)
    with admin.connect() as conn:
        if conn.execute(sa.text(EXISTS[backend]), {'name': url.database}).first():
            return None
        conn.exec_driver_sql(f'CREATE DATABASE {quoted}')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS {quoted}')

    return drop


def bench_backend(backend: str, uri: str, n: int, repeats: int, tmp: str) -> list[tuple]:
    drop_database = server_database(backend, uri)
    db = superduper(uri, home=tmp, artifact_store=f'filesystem://{tmp}/artifacts')
    engine = db.databackend.engine
    core = None
    try:
        db.databackend.drop_table(SD)  # leftovers of an interrupted run
        db.apply(Table(SD, fields=FIELDS))
        # the Core table: the columns and types superduper creates (per dialect), under another name
        backend_types = db.databackend
        core = sa.Table(CORE, sa.MetaData(), sa.Column('id', backend_types.id_type(), primary_key=True),
                        *[sa.Column(k, backend_types.column_type(storage)) for k, storage in FIELDS.items()])
        core.drop(engine, checkfirst=True)
        core.create(engine)

        rows = [{'txt': f'text {i}', 'n': i, 'f': i * 0.5} for i in range(n)]
        rows_with_ids = [{'id': uuid.uuid4().hex, **row} for row in rows]

        def clear_sd():
            db[SD].delete().execute()

        def clear_core():
            with engine.begin() as conn:
                conn.execute(core.delete())

        def core_insert():
            with engine.begin() as conn:
                conn.execute(core.insert(), rows_with_ids)

        def core_read(mappings: bool):
            with engine.connect() as conn:
                result = conn.execute(sa.select(core))
                return (result.mappings() if mappings else result).all()

        # warm up both paths (first-use reflection, statement compilation) outside the timings
        db[SD].insert(rows[:10]).execute()
        db[SD].select().execute().tolist()
        with engine.begin() as conn:
            conn.execute(core.insert(), rows_with_ids[:10])
        core_read(True)

        ins = medians({
            'sd': (clear_sd, lambda: db[SD].insert(rows).execute()),
            'sd_ids': (clear_sd, lambda: db[SD].insert(rows_with_ids).execute()),
            'core': (clear_core, core_insert),
        }, repeats)

        clear_sd()
        clear_core()
        db[SD].insert(rows).execute()
        core_insert()
        counts = {len(db[SD].select().execute().tolist()), len(core_read(False))}
        if counts != {n}:
            print(f'warning: {backend}: expected {n} rows in each table, read {sorted(counts)}', file=sys.stderr)
        read = medians({
            'sd': (nothing, lambda: db[SD].select().execute().tolist()),
            'core': (nothing, lambda: core_read(False)),
            'core_map': (nothing, lambda: core_read(True)),
        }, repeats)
    finally:
        if core is not None:
            core.drop(engine, checkfirst=True)
        db.databackend.drop_table(SD)
        if db.metadata.versions('Table', SD):
            db.remove('Table', SD)
        if not db.metadata.all():  # drop superduper's metadata tables unless other components live there
            db.metadata.drop()
        db.close()
        if drop_database:
            drop_database()

    return [
        (backend, f'insert {n} (ids generated)', ins['sd'], ins['core'], INSERT_TARGET),
        (backend, f'insert {n} (ids given)', ins['sd_ids'], ins['core'], INSERT_TARGET),
        (backend, f'read {n} vs Core tuples', read['sd'], read['core'], READ_TARGET),
        (backend, f'read {n} vs Core mappings', read['sd'], read['core_map'], READ_TARGET),
    ]


def bench_import(runs: int) -> list[tuple]:
    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, '-c', code], check=True)
        return time.perf_counter() - start

    cumulative, walls = [], []
    for _ in range(runs):
        err = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'import superduper'],
                             capture_output=True, text=True, check=True).stderr
        line = [x for x in err.splitlines() if x.rsplit('|', 1)[-1].strip() == 'superduper'][-1]
        cumulative.append(int(line.split('|')[1]) / 1e6)
        walls.append(wall('import superduper') - wall('pass'))
    return [
        ('-', 'import superduper (-X importtime)', statistics.median(cumulative), None, IMPORT_TARGET),
        ('-', 'import superduper (wall - bare python)', statistics.median(walls), None, IMPORT_TARGET),
    ]


def report(results: list[tuple]) -> None:
    print(f'{"backend":<11}{"operation":<40}{"superduper s":>13}{"core s":>9}{"ratio":>8}{"target":>9}  result')
    for backend, op, sd, core, target in results:
        if core is None:  # an absolute time, not a ratio
            value, cells = sd, f'{"-":>9}{"-":>8}{f"<={target:.2f}s":>9}'
        else:
            value = sd / core
            cells = f'{core:>9.3f}{f"{value:.2f}x":>8}{f"<={target:.1f}x":>9}'
        print(f'{backend:<11}{op:<40}{sd:>13.3f}{cells}  {"ok" if value <= target else "over"}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--backends', default='sqlite,postgresql', help=f'comma-separated, of: {", ".join(URIS)}')
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(',') if b.strip()]
    if unknown := [b for b in backends if b not in URIS]:
        parser.error(f'unknown backend(s) {", ".join(unknown)}; choose from {", ".join(URIS)}')

    print(f'{args.rows} rows, median of {args.repeats} runs; Python {sys.version.split()[0]}, '
          f'SQLAlchemy {sa.__version__}\n')
    results = []
    tmp = tempfile.mkdtemp(prefix='superduper-bench-')
    try:
        for backend in backends:
            try:
                results += bench_backend(backend, URIS[backend].format(tmp=tmp), args.rows, args.repeats, tmp)
            except (sa.exc.SQLAlchemyError, SuperduperError, OSError) as e:  # e.g. a server that is down
                print(f'{backend}: skipped, {type(e).__name__}: {e}'.splitlines()[0], file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results += bench_import(max(args.repeats, 5))
    report(results)


if __name__ == '__main__':
    main()
