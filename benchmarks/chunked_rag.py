"""Chunked RAG backfill: long texts split into chunks and the chunks embedded with MiniLM, through superduper
against the same work done by hand, same texts, same splitter, same model, same batch size.

    python benchmarks/chunked_rag.py [--texts 1000] [--repeats 3]

Texts: standard-library docstrings (real text), joined into long documents of about --length characters each.

- by hand: the documents read back from the same SQLite database with ``sqlite3``, in batches of --batch; each
  batch split with ``TextSplitter.predict`` (the same splitter), its chunk rows (id, document, position, text)
  written with ``executemany`` and committed; then the chunks read back in batches of --batch, each encoded with
  ``SentenceTransformer.encode(texts, batch_size=32, normalize_embeddings=True)`` and its vectors (float32 bytes)
  written and committed: what a script without superduper would do, taking the same --batch rows per step.
- superduper (``read_batch_size=--batch``): ``db.apply`` of a ``flatten=True`` listener of the splitter on the
  documents' table (the chunks' table, keyed by chunk, with source and position: guarded, numbered writes), then
  ``db.apply`` of the MiniLM listener on the chunks' table (vectors stored next to them): both backfills, timed
  together.

Both after a warm-up, taking turns --repeats times (the machine is shared: medians); target <= 1.15x. Both sides
call the same loaded model's ``encode``, timed as it runs: the time each side spends outside the model (reading,
splitting, encoding and writing rows, guards, numbering) is printed too, a figure the load of a shared machine
disturbs much less than the model's.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples'))

from stdlib_docs import docstrings  # noqa: E402

from superduper import Listener, Table, superduper  # noqa: E402
from superduper.components.text import TextSplitter  # noqa: E402
from superduper.ext.sentence_transformers import SentenceTransformer  # noqa: E402


def documents(n: int, length: int) -> list[str]:
    docs = [row['doc'] for row in docstrings(limit=2000)]
    out, k = [], 0
    for i in range(n):
        parts: list[str] = []
        while sum(len(p) for p in parts) < length:
            parts.append(docs[k % len(docs)])
            k += 1
        out.append('\n\n'.join(parts) + f' ({i})')
    return out


def by_hand(path: str, repeat: int, splitter: TextSplitter, raw, batch: int) -> int:
    conn = sqlite3.connect(path)
    chunks, vectors = f'hand_chunks_{repeat}', f'hand_vectors_{repeat}'
    conn.execute(f'CREATE TABLE {chunks} (id TEXT PRIMARY KEY, doc TEXT, position INTEGER, txt TEXT)')
    conn.execute(f'CREATE TABLE {vectors} (id TEXT PRIMARY KEY, v BLOB)')
    conn.commit()
    for docs in _batches(conn, 'SELECT id, txt FROM docs', batch):
        rows = [(f'{key}#{p}', key, p, chunk) for key, text in docs for p, chunk in enumerate(splitter.predict(text))]
        conn.executemany(f'INSERT INTO {chunks} VALUES (?, ?, ?, ?)', rows)
        conn.commit()
    count = 0
    for rows in _batches(conn, f'SELECT id, txt FROM {chunks}', batch):
        encoded = raw.encode([text for _, text in rows], batch_size=32, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
        conn.executemany(f'INSERT INTO {vectors} VALUES (?, ?)', [(k, v.tobytes()) for (k, _), v in zip(rows, encoded)])
        conn.commit()
        count += len(rows)
    conn.execute(f'DROP TABLE {chunks}')
    conn.execute(f'DROP TABLE {vectors}')
    conn.commit()
    conn.close()
    return count


def _batches(conn: sqlite3.Connection, sql: str, size: int):
    """The query's rows, ``size`` at a time, read before the batch's writes (as a script would)."""
    cursor = conn.execute(sql)
    rows = cursor.fetchall()
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def with_superduper(db, splitter: TextSplitter, model: SentenceTransformer, repeat: int) -> int:
    chunks = db.apply(splitter.to_listener('docs', key='txt', identifier=f'chunks-{repeat}', flatten=True))
    embedded = db.apply(Listener(model=model, select=db[chunks.outputs].select(), key=chunks.outputs,
                                 upstream=[chunks], identifier=f'minilm-{repeat}'))
    count = db.databackend.count(embedded.outputs)
    assert count == db.databackend.count(chunks.outputs)
    db.remove('Listener', embedded.identifier)
    db.remove('Listener', chunks.identifier)
    return count


class Timed:
    """Wraps a model's ``encode``, adding up the seconds spent in it."""

    def __init__(self, encode):
        self.encode, self.seconds = encode, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.encode(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--texts', type=int, default=1000)
    parser.add_argument('--length', type=int, default=3000, help='characters of each document, about')
    parser.add_argument('--chunk-size', type=int, default=500)
    parser.add_argument('--batch', type=int, default=2000, help='rows per step, both sides (superduper: read_batch_size)')
    parser.add_argument('--repeats', type=int, default=3, help='pairs of runs, by hand and superduper taking turns')
    args = parser.parse_args()
    texts = documents(args.texts, args.length)
    splitter = TextSplitter('splitter', chunk_size=args.chunk_size, chunk_overlap=args.chunk_size // 10)
    model = SentenceTransformer('minilm', encode_batch_size=32)
    raw = model.loaded()
    raw.encode(texts[:8], batch_size=32)  # warm-up
    raw.encode = timed = Timed(raw.encode)  # the listener calls the same loaded model
    with tempfile.TemporaryDirectory() as tmp:
        db = superduper(f'sqlite://{tmp}/rag.db', artifact_store=f'filesystem://{tmp}/artifacts', progress=False,
                        follow_changes=False, read_batch_size=args.batch)
        db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        db['docs'].insert([{'txt': t} for t in texts]).execute()
        hand_times, our_times, hand_outside, our_outside, counts = [], [], [], [], set()
        for repeat in range(args.repeats):
            timed.seconds, start = 0.0, time.perf_counter()
            counts.add(by_hand(f'{tmp}/rag.db', repeat, splitter, raw, args.batch))
            hand_times.append(time.perf_counter() - start)
            hand_outside.append(hand_times[-1] - timed.seconds)
            timed.seconds, start = 0.0, time.perf_counter()
            counts.add(with_superduper(db, splitter, model, repeat))
            our_times.append(time.perf_counter() - start)
            our_outside.append(our_times[-1] - timed.seconds)
        db.close()
    assert len(counts) == 1, f'the two sides made different numbers of chunks: {counts}'
    ours, hand = statistics.median(our_times), statistics.median(hand_times)
    pairs = statistics.median(o / h for o, h in zip(our_times, hand_times))
    print(f'{len(texts)} documents of ~{args.length} characters -> {counts.pop()} chunks of <= {args.chunk_size}, '
          f'MiniLM batch size 32, medians of {args.repeats}: superduper {ours:.1f}s, by hand {hand:.1f}s, ratio '
          f'{ours / hand:.2f}x (median of pair ratios {pairs:.2f}x; target <= 1.15x); outside the model: superduper '
          f'{statistics.median(our_outside):.2f}s, by hand {statistics.median(hand_outside):.2f}s')


if __name__ == '__main__':
    main()
