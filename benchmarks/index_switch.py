"""Search availability during a model switch (issue 21's figure for ``benchmarks/vector_search.py``).

    python benchmarks/index_switch.py [--rows 20000] [--backend sqlite]

An index over ``--rows`` clustered 384-d vectors is searched in a loop by one thread while another applies a new
version of its listener (a new model: the vectors negated, so every result set says which index answered it). The
figure: the share of searches that answered (target 100%), the share answered by a complete index (the old one's
top 10 or the new one's, never a mix), the queries per second during the switch against before it, and how long
the switch took.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import numpy as np

from superduper import ObjectModel, Table, VectorIndex, superduper

DIM = 384


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=20_000)
    parser.add_argument('--backend', default='sqlite', help='sqlite or a database URI')
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), args.rows)] + rng.normal(size=(args.rows, DIM)).astype(np.float32)
    vectors = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    query = vectors[0]
    old_top = set(np.argsort(-(vectors @ query))[:10].tolist())
    new_top = set(np.argsort(-(-vectors @ query))[:10].tolist())  # the new model negates rows, not the query vector

    with tempfile.TemporaryDirectory() as tmp:
        uri = f'sqlite://{tmp}/vectors.db' if args.backend == 'sqlite' else args.backend
        db = superduper(uri, artifact_store=f'filesystem://{tmp}/artifacts', home=f'{tmp}/home', progress=False)
        db.apply(Table('points', fields={'n': 'int'}, folds=False))
        db['points'].insert([{'id': str(i), 'n': i} for i in range(args.rows)]).execute()

        def index(sign: float) -> VectorIndex:
            model = ObjectModel('embedder', object=lambda i: sign * vectors[i] if i >= 0 else query,
                                datatype=f'vector[float32:{DIM}]')
            return VectorIndex('points-index', indexing_listener=model.to_listener('points', key='n', identifier='emb'))

        db.apply(index(1.0))
        stop, answers, failures = threading.Event(), [], []

        def search() -> None:
            while not stop.is_set():
                try:
                    found = db['points'].like({'n': -1}, vector_index='points-index', n=10).execute()
                    answers.append((time.perf_counter(), {int(r['id']) for r in found}))
                except Exception as e:
                    failures.append(e)

        started = time.perf_counter()
        searcher = threading.Thread(target=search)
        searcher.start()
        time.sleep(2)  # the rate before the switch
        began = time.perf_counter()
        db.apply(index(-1.0))
        ended = time.perf_counter()
        time.sleep(1)
        stop.set()
        searcher.join()
        db.close()
    total = len(answers) + len(failures)
    complete = sum(a in (old_top, new_top) for _, a in answers)
    before = sum(t < began for t, _ in answers) / (began - started)
    during = sum(began <= t < ended for t, _ in answers) / (ended - began)
    print(f'model switch over {args.rows} rows: {len(answers)}/{total} searches answered '
          f'({len(answers) / max(total, 1):.2%}, target 100%), {complete / max(len(answers), 1):.2%} from a complete '
          f'index; {during:.0f} QPS during the switch vs {before:.0f} before; switch took {ended - began:.1f} s')


if __name__ == '__main__':
    main()
