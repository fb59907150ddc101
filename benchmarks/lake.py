"""The lake backend (``parquet://<folder>``) against its engine and deltalake used directly, in the same run.

    PYTHONPATH=. python benchmarks/lake.py [--texts 5000] [--rows 1000000] [--repeats 5] [--backfill-repeats 3]
                                           [--engines duckdb,polars,datafusion] [--pyspark] [--threads N]
                                           [--figures backfill,read]

Everything lives in one temporary folder, the folder superduper opens as ``parquet://<folder>``. Each case runs
--repeats times (--backfill-repeats for the backfill), the two sides taking turns and the order flipped every round
(the machine may be shared: medians); the ratio is superduper / direct. What each side does:

1. backfill (target <= 1.15x): ``docs.parquet`` holds --texts short texts (``id`` int64, ``txt`` str: the first
   paragraph of standard-library docstrings, at most 200 characters, cycled, each made unique by its number).
   torch runs on --threads threads (default: torch's own count) on both sides; the model is loaded and warmed up
   once, outside the timings, and both sides call the same loaded ``sentence_transformers.SentenceTransformer``.
   - superduper: ``db.apply(SentenceTransformer('minilm').to_listener('docs', key='txt'))`` on
     ``superduper('parquet://<folder>')``: the backfill reads the texts through DuckDB, calls ``encode`` on
     ``batch_size`` (2048) texts at a time with ``encode_batch_size=32``, ``normalize_embeddings=True``, and writes
     the 384-d vectors into the listener's Delta outputs table; timed until ``apply`` returns (the backfill done).
     Between runs (untimed) the listener is removed;
   - direct: DuckDB's ``read_parquet`` of the same file (``id``, ``txt`` as Arrow), then for each 2048 texts
     ``model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)`` and one
     ``deltalake.write_deltalake(..., mode='append')`` of ``id`` and the vectors (a ``fixed_size_list<float32>[384]``
     column) into a Delta table in the same folder. Between runs (untimed) that table is deleted.
2. reading --rows rows (``t.parquet``: ``id`` int64, ``a`` float64, ``s`` a short string), for each engine
   (``parquet://<folder>?engine=<engine>``; ``pyspark`` only with --pyspark):
   - as a pandas DataFrame (target <= 1.3x): superduper ``db['t'].select().execute().to_pandas()``; direct:
     duckdb ``duckdb.sql("select * from read_parquet('t.parquet')").df()``, polars
     ``pl.read_parquet('t.parquet').to_pandas()``, datafusion ``SessionContext().read_parquet('t.parquet')
     .to_pandas()``, pyspark ``spark.read.parquet('t.parquet').toPandas()`` (Arrow enabled, the same local Spark);
   - as Python dict rows (no target, reported): superduper ``db['t'].select().execute().tolist()`` (``Document``s,
     dicts); direct: duckdb ``.fetchall()`` of the same query with ``dict(zip(columns, row))`` per row, polars
     ``pl.read_parquet(...).rows(named=True)``, datafusion ``ctx.read_parquet(...).to_pylist()``, pyspark
     ``[row.asDict() for row in spark.read.parquet(...).collect()]``.
   Both sides' results are compared once, outside the timings (a warning on stderr if they differ).

Change-capture lag on the lake backend is not measured here: it is to be added to ``benchmarks/change_capture.py``.
The script never fails on a time; "over" only flags a ratio above its target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples'))

from benchmarks.core_io import medians
from superduper import superduper

BACKFILL_TARGET, FRAME_TARGET = 1.15, 1.3
ENGINES = ('duckdb', 'polars', 'datafusion')


def short_texts(n: int) -> list[str]:
    from stdlib_docs import docstrings

    docs = [row['doc'][:200] for row in docstrings(limit=min(n, 2000))]
    return [f'{docs[i % len(docs)]} ({i})' for i in range(n)]


# ---- 1. backfill ------------------------------------------------------------------------------------------------
def bench_backfill(folder: str, n: int, repeats: int) -> list[tuple]:
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    from superduper.ext.sentence_transformers import SentenceTransformer

    texts = short_texts(n)
    path = os.path.join(folder, 'docs.parquet')
    pq.write_table(pa.table({'id': pa.array(range(n), pa.int64()), 'txt': pa.array(texts, pa.string())}), path)
    model = SentenceTransformer('minilm', encode_batch_size=32)
    chunk, encode_batch = model.batch_size, model.encode_batch_size
    raw = model.loaded()
    raw.encode(texts[:64], batch_size=encode_batch, show_progress_bar=False)  # warm-up
    dim = int(raw.encode(['x'], show_progress_bar=False).shape[1])
    direct_out = os.path.join(folder, '_direct_vectors')

    db = superduper(f'parquet://{folder}', artifact_store=f'filesystem://{folder}/.artifacts', progress=False,
                    follow_changes=False)
    runs = {'sd': 0}
    applied: list[str] = []

    def check(found: int, side: str) -> None:
        if found != n:
            print(f'warning: backfill: {side} stored {found} vectors, expected {n}', file=sys.stderr)

    def clear_sd() -> None:
        while applied:
            identifier = applied.pop()
            listener = db.load('Listener', identifier)
            check(db.databackend.count(listener.outputs), 'superduper')
            db.remove('Listener', identifier)

    def run_sd() -> None:
        runs['sd'] += 1
        identifier = f'minilm-{runs["sd"]}'
        db.apply(model.to_listener('docs', key='txt', identifier=identifier))
        applied.append(identifier)

    def clear_direct() -> None:
        if os.path.exists(direct_out):
            check(DeltaTable(direct_out).to_pyarrow_table().num_rows, 'direct')
            shutil.rmtree(direct_out)

    def run_direct() -> None:
        con = duckdb.connect()
        table = con.sql(f"SELECT id, txt FROM read_parquet('{path}')").to_arrow_table()
        con.close()
        ids, txts = table.column('id').to_pylist(), table.column('txt').to_pylist()
        for start in range(0, len(txts), chunk):
            vectors = raw.encode(txts[start : start + chunk], batch_size=encode_batch, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
            flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
            write_deltalake(direct_out, pa.table({
                'id': pa.array(ids[start : start + chunk], pa.int64()),
                'vector': pa.FixedSizeListArray.from_arrays(flat, dim),
            }), mode='append')

    try:
        times = medians({'sd': (clear_sd, run_sd), 'direct': (clear_direct, run_direct)}, repeats)
        clear_sd()
        clear_direct()
    finally:
        db.close()
    return [('duckdb', f'backfill {n} texts (MiniLM, batch {chunk}/{encode_batch})', times['sd'], times['direct'],
             BACKFILL_TARGET)]


# ---- 2. reading ---------------------------------------------------------------------------------------------------
def make_table(path: str, n: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.arange(n, dtype=np.int64)
    pq.write_table(pa.table({
        'id': ids,
        'a': ids * 0.25,
        's': pa.array([f'row {i}' for i in range(n)], pa.string()),
    }), path)


def direct_readers(engine: str, path: str, spark: Any = None) -> tuple[Callable[[], Any], Callable[[], list]]:
    """(read as a pandas DataFrame, read as dict rows) with the engine's own API on the file."""
    if engine == 'duckdb':
        import duckdb

        query = f"SELECT * FROM read_parquet('{path}')"

        def rows() -> list:
            rel = duckdb.sql(query)
            names = rel.columns
            return [dict(zip(names, row)) for row in rel.fetchall()]

        return (lambda: duckdb.sql(query).df()), rows
    if engine == 'polars':
        import polars as pl

        return (lambda: pl.read_parquet(path).to_pandas()), (lambda: pl.read_parquet(path).rows(named=True))
    if engine == 'datafusion':
        import datafusion

        ctx = datafusion.SessionContext()
        return (lambda: ctx.read_parquet(path).to_pandas()), (lambda: ctx.read_parquet(path).to_pylist())
    if engine == 'pyspark':
        return (lambda: spark.read.parquet(path).toPandas()), \
            (lambda: [row.asDict() for row in spark.read.parquet(path).collect()])
    raise ValueError(engine)


def same_frames(ours: Any, theirs: Any) -> str | None:
    """None when the frames hold the same values (dtypes may differ), else what differs."""
    import pandas as pd

    if list(ours.columns) != list(theirs.columns) or len(ours) != len(theirs):
        return f'columns {list(ours.columns)} x {len(ours)} rows vs {list(theirs.columns)} x {len(theirs)} rows'
    ours, theirs = ours.sort_values('id', ignore_index=True), theirs.sort_values('id', ignore_index=True)
    try:
        pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    except AssertionError as e:
        return str(e).splitlines()[0]
    return None


def same_rows(ours: list, theirs: list) -> bool:
    def key(row: dict) -> Any:
        return row['id']

    return len(ours) == len(theirs) and [dict(r) for r in sorted(ours, key=key)] == sorted(theirs, key=key)


def bench_reads(folder: str, n: int, engines: list[str], repeats: int) -> list[tuple]:
    path = os.path.join(folder, 't.parquet')
    make_table(path, n)
    results = []
    for engine in engines:
        db = superduper(f'parquet://{folder}?engine={engine}', artifact_store=f'filesystem://{folder}/.artifacts',
                        progress=False, follow_changes=False)
        try:
            spark = getattr(db.databackend.query_engine, '_spark', None)
            direct_frame, direct_rows = direct_readers(engine, path, spark)

            def sd_frame(db: Any = db) -> Any:
                return db['t'].select().execute().to_pandas()

            def sd_rows(db: Any = db) -> list:
                return db['t'].select().execute().tolist()

            # warm-up of both paths, and the one check that they read the same values (untimed)
            if (diff := same_frames(sd_frame(), direct_frame())) is not None:
                print(f'warning: {engine}: the DataFrames differ: {diff}', file=sys.stderr)
            if not same_rows(sd_rows(), direct_rows()):
                print(f'warning: {engine}: the dict rows differ', file=sys.stderr)
            frame = medians({'sd': (_nothing, sd_frame), 'direct': (_nothing, direct_frame)}, repeats)
            rows = medians({'sd': (_nothing, sd_rows), 'direct': (_nothing, direct_rows)}, repeats)
        finally:
            db.close()
        results.append((engine, f'read {n} rows as a DataFrame', frame['sd'], frame['direct'], FRAME_TARGET))
        results.append((engine, f'read {n} rows as dicts', rows['sd'], rows['direct'], None))
    return results


def _nothing() -> None:
    pass


def report(results: list[tuple]) -> None:
    print(f'{"engine":<12}{"operation":<44}{"superduper s":>13}{"direct s":>10}{"ratio":>8}{"target":>9}  result')
    for engine, op, sd, direct, target in results:
        ratio = sd / direct
        verdict = '' if target is None else ('ok' if ratio <= target else 'over')
        shown = '' if target is None else f'<={target:.2f}x'
        print(f'{engine:<12}{op:<44}{sd:>13.3f}{direct:>10.3f}{f"{ratio:.2f}x":>8}{shown:>9}  {verdict}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--texts', type=int, default=5000)
    parser.add_argument('--rows', type=int, default=1_000_000)
    parser.add_argument('--repeats', type=int, default=5, help='runs of each read, the two sides taking turns')
    parser.add_argument('--backfill-repeats', type=int, default=3, help='runs of each side of the backfill')
    parser.add_argument('--engines', default=','.join(ENGINES), help=f'comma-separated, of: {", ".join(ENGINES)}')
    parser.add_argument('--pyspark', action='store_true', help='also read through PySpark (starts a local Spark)')
    parser.add_argument('--threads', type=int, default=None, help="torch's threads, on both sides")
    parser.add_argument('--figures', default='backfill,read', help='comma-separated, of: backfill, read')
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(',') if e.strip()]
    if unknown := [e for e in engines if e not in ENGINES]:
        parser.error(f'unknown engine(s) {", ".join(unknown)}; choose from {", ".join(ENGINES)} (and --pyspark)')
    if args.pyspark:
        engines.append('pyspark')
    figures = {f.strip() for f in args.figures.split(',') if f.strip()}

    import deltalake
    import duckdb
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'Python {sys.version.split()[0]}, DuckDB {duckdb.__version__}, deltalake {deltalake.__version__}, '
          f'torch {torch.__version__} on {torch.get_num_threads()} threads; medians of '
          + ', '.join(([f'{args.backfill_repeats} backfills'] if 'backfill' in figures else [])
                      + ([f'{args.repeats} reads'] if 'read' in figures else [])) + '\n')
    folder = tempfile.mkdtemp(prefix='superduper-lake-bench-')
    results: list[tuple] = []
    try:
        if 'backfill' in figures:
            results += bench_backfill(folder, args.texts, args.backfill_repeats)
        if 'read' in figures:
            results += bench_reads(folder, args.rows, engines, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(results)


if __name__ == '__main__':
    main()
