"""Embedding backfill with the MiniLM listener against the same model's raw ``encode``, same texts, same batch size.

    python benchmarks/embedding_backfill.py [--texts 5000] [--uri sqlite]

Texts: standard-library docstrings (real text, cycled to reach --texts). Raw: ``SentenceTransformer.encode(texts,
batch_size=32, normalize_embeddings=True)`` on the whole list. superduper: ``db.apply(listener)`` on a table holding
the same texts (reading them, encoding, storing 384-d vectors). Both after a warm-up, taking turns --repeats times
(the machine is shared: medians); target <= 1.15x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples'))

from stdlib_docs import docstrings  # noqa: E402

from superduper import Table, superduper  # noqa: E402
from superduper.ext.sentence_transformers import SentenceTransformer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--texts', type=int, default=5000)
    parser.add_argument('--repeats', type=int, default=3, help='pairs of runs, raw and superduper taking turns')
    parser.add_argument('--uri', default='sqlite')
    args = parser.parse_args()
    docs = [row['doc'] for row in docstrings(limit=args.texts)]
    texts = [f'{docs[i % len(docs)]} ({i})' for i in range(args.texts)]
    model = SentenceTransformer('minilm', encode_batch_size=32)
    raw = model.loaded()
    raw.encode(texts[:64], batch_size=32)  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        uri = f'sqlite://{tmp}/emb.db' if args.uri == 'sqlite' else args.uri
        db = superduper(uri, artifact_store=f'filesystem://{tmp}/artifacts', progress=False, follow_changes=False)
        db.apply(Table('texts', fields={'txt': 'str'}, folds=False))
        db['texts'].insert([{'txt': t} for t in texts]).execute()
        raw_times, our_times = [], []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            raw.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            raw_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            listener = db.apply(model.to_listener('texts', key='txt', identifier=f'minilm-{repeat}'))
            our_times.append(time.perf_counter() - start)
            assert db.databackend.count(listener.outputs) == len(texts)
            db.remove('Listener', listener.identifier)
        if args.uri != 'sqlite':
            db.remove('Table', 'texts', force=True)
        db.close()
    ours, raw_time = statistics.median(our_times), statistics.median(raw_times)
    pairs = statistics.median(o / r for o, r in zip(our_times, raw_times))
    print(f'{len(texts)} texts, batch size 32, medians of {args.repeats}: superduper backfill {ours:.1f}s, '
          f'raw encode {raw_time:.1f}s, ratio {ours / raw_time:.2f}x (median of pair ratios {pairs:.2f}x; '
          'target <= 1.15x)')


if __name__ == '__main__':
    main()
