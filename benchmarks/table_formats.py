"""Delta Lake (``deltalake``) against Apache Iceberg (``pyiceberg`` with its SQL catalog on SQLite) on the writes the
folder backend (``parquet://``) makes, to say why it writes Delta tables.

Both sides do the same work on the same Arrow data, in local folders, one format after the other, in one run:

- ``append``: ``--commits`` appends of ``--batch`` rows, one commit each (an insert through superduper);
- ``upsert``: ``--upsert`` rows (half new keys, half stored ones) merged on the key into a table of ``--rows`` rows
  (listeners' outputs: Delta's ``MERGE``; Iceberg's ``Table.upsert``);
- ``delete``: 100 rows deleted by key (Delta's ``DELETE`` by predicate; Iceberg's ``Table.delete``);
- ``read``: the whole table read back into Arrow.

Medians of ``--repeat`` runs, and Iceberg's time over Delta's. Iceberg runs in the benchmark's own environment
(``pip install 'pyiceberg[sql-sqlite,pyarrow]' deltalake``; it is not a dependency of superduper).

    python benchmarks/table_formats.py [--rows 100000] [--commits 50] [--batch 100] [--upsert 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from typing import Callable

import pyarrow as pa


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({'id': pa.array(ids, pa.int64()), 'txt': [f'text {i}' for i in ids],
                     'score': pa.array([i * 0.5 for i in ids], pa.float64())})


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Delta:
    name = 'delta'

    def __init__(self, folder: str):
        from deltalake import DeltaTable, write_deltalake

        self.path, self.write, self.table = os.path.join(folder, 't'), write_deltalake, DeltaTable

    def create(self, data: pa.Table) -> None:
        self.write(self.path, data)

    def append(self, data: pa.Table) -> None:
        self.write(self.path, data, mode='append')

    def upsert(self, data: pa.Table) -> None:
        (self.table(self.path).merge(data, predicate='t.id = s.id', source_alias='s', target_alias='t')
         .when_matched_update_all().when_not_matched_insert_all().execute())

    def delete(self, keys: list[int]) -> None:
        self.table(self.path).delete(f'id IN ({", ".join(map(str, keys))})')

    def read(self) -> pa.Table:
        return self.table(self.path).to_pyarrow_table()


class Iceberg:
    name = 'iceberg'

    def __init__(self, folder: str):
        from pyiceberg.catalog.sql import SqlCatalog

        self.catalog = SqlCatalog('bench', uri=f'sqlite:///{folder}/catalog.db', warehouse=f'file://{folder}')
        self.catalog.create_namespace('bench')

    def create(self, data: pa.Table) -> None:
        from pyiceberg.schema import Schema
        from pyiceberg.types import DoubleType, LongType, NestedField, StringType

        schema = Schema(NestedField(1, 'id', LongType(), required=True), NestedField(2, 'txt', StringType()),
                        NestedField(3, 'score', DoubleType()), identifier_field_ids=[1])
        self.table = self.catalog.create_table('bench.t', schema=schema)
        self.append(data)

    def _conform(self, data: pa.Table) -> pa.Table:
        return data.cast(self.table.schema().as_arrow())

    def append(self, data: pa.Table) -> None:
        self.table.append(self._conform(data))

    def upsert(self, data: pa.Table) -> None:
        self.table.upsert(self._conform(data), join_cols=['id'])

    def delete(self, keys: list[int]) -> None:
        from pyiceberg.expressions import In

        self.table.delete(In('id', keys))

    def read(self) -> pa.Table:
        return self.table.scan().to_arrow()


def run(fmt: type, args: argparse.Namespace) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix=f'sd-{fmt.name}-')
    try:
        table = fmt(folder)
        table.create(rows(0, args.rows))
        times = {'append': timed(lambda: [table.append(rows(args.rows + args.upsert + i * args.batch, args.batch))
                                          for i in range(args.commits)]) / args.commits}
        half = args.upsert // 2
        times['upsert'] = timed(lambda: table.upsert(rows(args.rows - half, args.upsert)))
        times['delete'] = timed(lambda: table.delete(list(range(0, 10_000, 100))))
        expected = args.rows + args.commits * args.batch + (args.upsert - half) - 100
        times['read'] = timed(lambda: table.read())
        assert table.read().num_rows == expected, (fmt.name, table.read().num_rows, expected)
        return times
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--commits', type=int, default=50)
    parser.add_argument('--batch', type=int, default=100)
    parser.add_argument('--upsert', type=int, default=1000)
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args()
    results = {fmt.name: [run(fmt, args) for _ in range(args.repeat)] for fmt in (Delta, Iceberg)}
    print(f'{args.rows:,} rows; {args.commits} appends of {args.batch}; upsert of {args.upsert}; medians of '
          f'{args.repeat}')
    print(f'{"operation":<10} {"delta s":>10} {"iceberg s":>10} {"iceberg/delta":>14}')
    for op in ('append', 'upsert', 'delete', 'read'):
        delta = statistics.median(r[op] for r in results['delta'])
        iceberg = statistics.median(r[op] for r in results['iceberg'])
        print(f'{op:<10} {delta:>10.4f} {iceberg:>10.4f} {iceberg / delta:>13.2f}x')


if __name__ == '__main__':
    main()
