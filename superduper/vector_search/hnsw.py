"""HNSW search with hnswlib (``pip install 'superduper[hnsw]'``), over the positions of the exact store.

The vectors live in the graph only (no second copy beside hnswlib's own): exact search over a few candidates reads
them back with ``get_items``. A written vector is not put into the graph at once: its old node (if any) is only
marked deleted, and the vector waits in ``pending``, searched exactly next to the graph, until ``flush`` adds the
pending vectors in one parallel batch as new nodes (reusing deleted slots). Replacing a node in place costs hnswlib
about three times as much as adding one, and one write at a time costs more than a batch: following a stream of
writes, or catching up with a thousand changed rows, costs little until the graph is next flushed (when enough
have waited, or when the index is saved).
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from superduper.base.exceptions import InvalidValue
from superduper.base.keys import dump_key, load_key
from superduper.vector_search.exact import ExactSearcher, Subset, scored
from superduper.vector_search.signs import hamming, pack_signs

SPACES = {'cosine': 'ip', 'dot': 'ip', 'l2': 'l2'}  # cosine rows are normalised by the store
FLUSH_CHUNK = 10_000  # vectors added to the graph per call (bounds the copy handed to hnswlib)
EXACT_AMONG = 2000  # vectors of a subset scanned on their codes rather than searched in the graph, at least
#: a subset holding at least this share of the vectors is searched in the graph, its nearest nodes checked for
#: membership: GRAPH_MARGIN x n / share deep (recall@10 1.0 at 50% of 100k clustered vectors, 0.93 at 20% with 2x)
GRAPH_FROM, GRAPH_MARGIN = 0.25, 4
#: a smaller subset: the vectors whose signs differ least from the query's, this many per result, scored exactly
#: (recall@10 at 10% of 100k clustered vectors 0.97 with 200, 0.94 with 100)
SHORTLIST = 200


def _hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError as e:
        from superduper.base.registry import Implementation, missing_dependency

        raise missing_dependency('hnsw', Implementation('', extra='hnsw', driver='hnswlib'), e) from e
    return hnswlib


class HnswSearcher(ExactSearcher):
    kind = 'hnsw'

    def __init__(self, dim: int, measure: str = 'cosine', M: int = 16, ef_construction: int = 200, ef: int = 64):
        super().__init__(dim, measure)
        self.M, self.ef_construction, self.ef = M, ef_construction, ef
        self.index = self._new_index(1024)
        self.labels = np.zeros(0, dtype=np.int64)  # position -> its node's label in the graph (-1: none)
        self.position_of = np.zeros(0, dtype=np.int64)  # label -> position (-1: none); an array, not a dict of ints
        self.next_label = 0
        self.pending: dict[int, np.ndarray] = {}  # alive position -> its vector, not yet in the graph
        self.codes = Codes(dim)

    def _new_index(self, capacity: int) -> Any:
        index = _hnswlib().Index(space=SPACES[self.measure], dim=self.dim)
        index.init_index(max_elements=capacity, ef_construction=self.ef_construction, M=self.M,
                         allow_replace_deleted=True)
        index.set_ef(self.ef)
        self._current_ef = self.ef
        return index

    # ---- writes -----------------------------------------------------------------------------------------------
    def _store(self, positions: np.ndarray, matrix: np.ndarray) -> None:
        if len(self.labels) < len(self.ids):
            grown = np.full(max(len(self.ids), int(len(self.labels) * 1.5) + 1024), -1, dtype=np.int64)
            grown[: len(self.labels)] = self.labels
            self.labels = grown
        self.codes.put(positions, matrix, len(self.ids))
        for pos, vector in zip(positions.tolist(), matrix):
            self._unlink(pos)
            self.pending[pos] = vector

    def remove(self, ids: Iterable[Any]) -> np.ndarray:
        positions = super().remove(ids)
        for pos in positions.tolist():
            self._unlink(pos)
            self.pending.pop(pos, None)
        return positions

    def _unlink(self, pos: int) -> None:
        """The graph stops answering for this position (its node is marked deleted, its slot reused later)."""
        label = int(self.labels[pos])
        if label >= 0:
            self.index.mark_deleted(label)
            self.position_of[label] = -1
            self.labels[pos] = -1

    def flush(self) -> None:
        """Add the pending vectors to the graph, as new nodes."""
        pending = sorted(self.pending)
        if pending:
            self.version += 1
        for start in range(0, len(pending), FLUSH_CHUNK):
            positions = np.array(pending[start : start + FLUSH_CHUNK], dtype=np.int64)
            needed = self.index.element_count + len(positions)
            if needed > self.index.get_max_elements():
                self.index.resize_index(max(needed, int(self.index.get_max_elements() * 1.5)))
            labels = np.arange(self.next_label, self.next_label + len(positions), dtype=np.int64)
            chunk = np.stack([self.pending.pop(p) for p in positions.tolist()])
            self.index.add_items(chunk, labels, replace_deleted=True)
            del chunk
            self.next_label += len(positions)
            self.labels[positions] = labels
            if self.next_label > len(self.position_of):
                self.position_of = _grown_to(self.position_of, max(self.next_label, len(self.position_of) * 3 // 2))
            self.position_of[labels] = positions

    # ---- reads ------------------------------------------------------------------------------------------------
    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """The stored vectors at ``positions``, read back from the graph (zeros where none is stored)."""
        out = np.zeros((len(positions), self.dim), dtype=np.float32)
        labels = self.labels[positions]
        linked = np.flatnonzero(labels >= 0)
        if len(linked):
            out[linked] = self.index.get_items(labels[linked], return_type='numpy')
        for i in np.flatnonzero(labels < 0).tolist():
            vector = self.pending.get(int(positions[i]))
            if vector is not None:
                out[i] = vector
        return out

    def scores(self, query: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Exact scores, the vectors read back from the graph (for a few positions: reading costs)."""
        rows = self.vectors(np.arange(len(self.ids), dtype=np.int64) if positions is None else positions)
        return scored(rows, query, self.measure)

    def _nearest_of(self, q: np.ndarray, n: int, positions: np.ndarray) -> list[tuple[Any, float]]:
        """The ``n`` nearest of ``positions`` (alive), exactly: scored on the int8 codes with a bound on each
        score's error, then only those whose bound reaches the n-th best are scored again on the real vectors."""
        if n <= 0 or not len(positions):
            return []
        approx, error = self.codes.scores(q, positions, self.measure)
        low = approx - error
        floor = np.partition(low, len(low) - n)[len(low) - n] if n < len(low) else -np.inf
        close = positions[approx + error >= floor]
        exact = self.scores(q, close)
        top = np.argsort(-exact, kind='stable')[:n]
        return [(self.ids[p], float(s)) for p, s in zip(close[top].tolist(), exact[top].tolist())]

    def _exact_search(self, query: Any, n: int, candidates: Sequence[Any] | None) -> list[tuple[Any, float]]:
        q = self.prepare(query)[0]
        positions = self.alive_positions(candidates)
        return self._nearest_of(q, n, positions)

    def reads_only(self, n: int, candidates: Sequence[Any] | None = None, beam: int | None = None) -> bool:
        return candidates is not None or self._ef_for(n, beam) == self._current_ef  # else the graph's ef is set first

    def _ef_for(self, k: int, beam: int | None = None) -> int:
        return max(self.ef, 2 * k, beam or 0)  # a wider beam for the candidate lists of filtered searches

    def search(self, query: Any, n: int, candidates: Sequence[Any] | None = None,
               beam: int | None = None) -> list[tuple[Any, float]]:
        alive = len(self)
        if candidates is not None or n >= alive or alive < 1000 or len(self.pending) * 2 > alive:
            return self._exact_search(query, n, candidates)
        q = self.prepare(query)[0]
        hits = self._graph_search(q, min(n, alive - len(self.pending)), self._ef_for(n, beam))
        if hits is None:  # too few reachable nodes (many deleted): answer exactly
            return self._exact_search(query, n, None)
        return self._with_pending(q, n, hits, None)

    def subset(self, ids: Sequence[Any]) -> Subset:
        """The alive vectors of ``ids``, with a membership mask over positions and the signs of their codes."""
        positions = self.alive_positions(ids)
        member = np.zeros(len(self.ids), dtype=bool)
        member[positions] = True
        signs = pack_signs(self.codes.codes[positions], self.dim)
        waiting = frozenset(positions[self.labels[positions] < 0].tolist())
        return Subset(positions, self.version, member, signs, waiting)

    def _among(self, q: np.ndarray, n: int, subset: Subset, exact_limit: int | None) -> list[tuple[Any, float]]:
        """A few: exactly, on the codes. Many (most of the index): the graph's nearest, deep enough that ``n`` of
        them are in the subset. Between: the vectors whose signs differ least from the query's, a shortlist scored
        exactly (hnswlib's filter callback calls Python at every node it visits: slower than either)."""
        positions = subset.positions
        if self.subset_is_exact(n, subset, exact_limit):
            return self._nearest_of(q, n, positions)
        if self._graph_among(n, subset):
            k = self._graph_depth(n, subset)
            hits = self._graph_search(q, k, max(self.ef, k))
            if hits is not None:
                member = subset.member
                hits = [h for h in hits if member[h[0]]]
                if len(hits) >= min(n, len(positions) - len(subset.waiting)):
                    return self._with_pending(q, n, hits, subset.waiting)
        shortlist = min(len(positions), SHORTLIST * n)
        close = np.argpartition(hamming(subset.signs, q), shortlist - 1)[:shortlist] \
            if shortlist < len(positions) else np.arange(len(positions))
        return self._nearest_of(q, n, positions[close])

    def subset_is_exact(self, n: int, subset: Subset, exact_limit: int | None = None) -> bool:
        """Scanning the codes of this many costs less than any other way (and they are at most ``exact_limit``)."""
        few = max(EXACT_AMONG, math.sqrt(8 * n * max(len(self), 1)))
        return len(subset.positions) <= min(few, exact_limit or few)

    def _graph_among(self, n: int, subset: Subset) -> bool:
        return len(subset.positions) >= GRAPH_FROM * len(self) and len(self.pending) * 2 <= len(self)

    def _graph_depth(self, n: int, subset: Subset) -> int:
        share = len(subset.positions) / max(len(self), 1)
        return min(math.ceil(GRAPH_MARGIN * n / share), len(self) - len(self.pending))

    def subset_reads_only(self, n: int, subset: Subset, exact_limit: int | None = None) -> bool:
        if self.subset_is_exact(n, subset, exact_limit) or not self._graph_among(n, subset):
            return True
        return max(self.ef, self._graph_depth(n, subset)) == self._current_ef

    def _with_pending(self, q: np.ndarray, n: int, hits: list, among: set | None) -> list[tuple[Any, float]]:
        """The graph's hits merged with the nearest pending vectors (those ``among`` if given), as (id, score)."""
        waiting = list(self.pending) if among is None else list(among)
        if waiting:
            positions = np.array(waiting, dtype=np.int64)
            scores = self.scores(q, positions)
            top = np.argsort(-scores)[:n]
            hits += list(zip(positions[top].tolist(), scores[top].tolist()))
            hits.sort(key=lambda h: -h[1])
        ids = self.ids
        return [(ids[p], s) for p, s in hits[:n]]

    def _graph_search(self, q: np.ndarray, k: int, ef: int) -> list[tuple[int, float]] | None:
        """(position, score) of the ``k`` nearest nodes of the graph."""
        if k <= 0:
            return []
        if ef != self._current_ef:
            self.index.set_ef(ef)
            self._current_ef = ef
        try:
            labels, distances = self.index.knn_query(q, k=k)
        except RuntimeError:
            return None
        positions = self.position_of[labels[0]].tolist()
        if self.measure == 'l2':
            return [(p, -d) for p, d in zip(positions, distances[0].tolist())]
        return [(p, 1.0 - d) for p, d in zip(positions, distances[0].tolist())]

    # ---- persistence ------------------------------------------------------------------------------------------
    def save(self, folder: str) -> None:
        """The graph (which holds the vectors) written by hnswlib straight to its file, and the positions: no
        other copy of the vectors is made."""
        self.flush()
        size = len(self.ids)
        with open(os.path.join(folder, 'ids.json'), 'w') as f:
            f.write(dump_key(list(self.ids)))
        np.save(os.path.join(folder, 'alive.npy'), self.alive[:size])
        np.save(os.path.join(folder, 'labels.npy'), self.labels[:size])
        np.save(os.path.join(folder, 'next_label.npy'), np.array([self.next_label], dtype=np.int64))
        self.codes.save(folder, size)
        self.index.save_index(os.path.join(folder, 'hnsw.bin'))

    def load(self, folder: str) -> None:
        with open(os.path.join(folder, 'ids.json')) as f:
            self.ids = list(load_key(f.read()) or ())
        self.positions = {id_: i for i, id_ in enumerate(self.ids)}
        self.alive = np.load(os.path.join(folder, 'alive.npy'))
        self.labels = np.load(os.path.join(folder, 'labels.npy'))
        if len(self.alive) != len(self.ids) or len(self.labels) != len(self.ids):
            raise InvalidValue(f'saved index in {folder} is inconsistent: {len(self.ids)} ids, '
                               f'{len(self.labels)} labels')
        self._count = int(self.alive.sum())
        self.version += 1
        linked = np.flatnonzero(self.labels >= 0)
        self.position_of = np.full(int(self.labels.max(initial=-1)) + 1, -1, dtype=np.int64)
        self.position_of[self.labels[linked]] = linked
        self.next_label = int(np.load(os.path.join(folder, 'next_label.npy'))[0])  # deleted nodes keep theirs
        self.pending = {}  # saved after a flush: every alive vector is in the graph
        self.index = _hnswlib().Index(space=SPACES[self.measure], dim=self.dim)
        self.index.load_index(os.path.join(folder, 'hnsw.bin'), max_elements=max(len(self.ids), 1024),
                              allow_replace_deleted=True)
        self.index.set_ef(self.ef)
        self._current_ef = self.ef
        self.codes = Codes(self.dim)
        if not self.codes.load(folder, len(self.ids)):  # saved before the codes were: made from the graph
            for start in range(0, len(self.ids), 1000):
                positions = np.arange(start, min(start + 1000, len(self.ids)), dtype=np.int64)
                self.codes.put(positions, self.vectors(positions), len(self.ids))


class Codes:
    """Each vector as int8 codes times a scale of its own, with the norm of what that loses: an exact search over
    a few thousand candidates reads a quarter of the bytes, and only the vectors it cannot tell apart from the
    n-th best are read back from the graph. Not a copy of the vectors: a quarter of their size."""

    def __init__(self, dim: int):
        self.dim = dim
        self.codes = np.zeros((0, dim), dtype=np.int8)
        self.scale = np.zeros(0, dtype=np.float32)
        self.error = np.zeros(0, dtype=np.float32)  # |v - scale * codes|
        self.norm = np.zeros(0, dtype=np.float32)  # |scale * codes|

    def put(self, positions: np.ndarray, vectors: np.ndarray, size: int) -> None:
        if size > len(self.codes):
            capacity = max(size, int(len(self.codes) * 1.5) + 1024)
            self.codes = _grown(self.codes, (capacity, self.dim))
            self.scale, self.error, self.norm = (_grown(a, (capacity,)) for a in (self.scale, self.error, self.norm))
        vectors = np.asarray(vectors, dtype=np.float32)
        scale = np.abs(vectors).max(axis=1) / 127
        scale[scale == 0] = 1
        codes = np.rint(vectors / scale[:, None]).astype(np.int8)
        decoded = codes * scale[:, None]
        self.codes[positions] = codes
        self.scale[positions] = scale
        # rounded up, with a margin for the float32 arithmetic of the scores: the bound must hold
        self.error[positions] = np.linalg.norm(vectors - decoded, axis=1) * 1.001 + 1e-6
        self.norm[positions] = np.linalg.norm(decoded, axis=1)

    def scores(self, q: np.ndarray, positions: np.ndarray, measure: str) -> tuple[np.ndarray, np.ndarray]:
        """Approximate scores of ``positions`` and a bound on how far each is from the exact one."""
        scale, error = self.scale[positions], self.error[positions]
        dots = np.einsum('ij,j->i', self.codes[positions], q) * scale  # converted as multiplied, never copied
        qnorm = float(np.linalg.norm(q))
        reach = self.norm[positions] + error + qnorm  # bounds the terms float32 rounds, in both scores
        margin = 1e-5 * (1 + reach * reach)
        if measure == 'l2':  # -|v - q|^2 within error * (2 |v' - q| + error) of -|v' - q|^2
            distance = np.sqrt(np.maximum(self.norm[positions] ** 2 - 2 * dots + qnorm * qnorm, 0))
            return -distance ** 2, error * (2 * distance + error) + margin
        return dots, error * qnorm + margin

    def scan(self, q: np.ndarray, positions: Any, measure: str) -> tuple[np.ndarray, np.ndarray]:
        """``scores`` for many positions (a whole quantised index): for inner products the query is made int8 codes
        too, so the codes are multiplied as integers, never converted (about four times faster); the bound grows by
        what the query's rounding loses."""
        if measure == 'l2':
            return self.scores(q, positions, measure)
        q_scale = float(np.abs(q).max()) / 127 or 1.0
        q_codes = np.rint(q / q_scale).astype(np.int8)
        q_error = float(np.linalg.norm(q - q_codes * np.float32(q_scale))) * 1.001 + 1e-6
        scale, error, norm = self.scale[positions], self.error[positions], self.norm[positions]
        dots = np.einsum('ij,j->i', self.codes[positions], q_codes, dtype=np.int32) * (scale * np.float32(q_scale))
        qnorm = float(np.linalg.norm(q))
        reach = norm + error + qnorm
        return dots, error * qnorm + norm * q_error + 1e-5 * (1 + reach * reach)

    def save(self, folder: str, size: int) -> None:
        for name in ('codes', 'scale', 'error', 'norm'):
            np.save(os.path.join(folder, f'{name}.npy'), getattr(self, name)[:size])

    def load(self, folder: str, size: int) -> bool:
        """Read what ``save`` wrote (the codes mapped, not read); ``False`` where it wrote nothing."""
        if not os.path.exists(os.path.join(folder, 'codes.npy')):
            return False
        self.codes = np.load(os.path.join(folder, 'codes.npy'), mmap_mode='c').reshape(-1, self.dim)
        self.scale, self.error, self.norm = (np.load(os.path.join(folder, f'{name}.npy'))
                                             for name in ('scale', 'error', 'norm'))
        return len(self.codes) == size


def _grown_to(array: np.ndarray, size: int) -> np.ndarray:
    grown = np.full(size, -1, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _grown(array: np.ndarray, shape: tuple) -> np.ndarray:
    grown = np.zeros(shape, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


SEARCHERS = {'exact': ExactSearcher, 'hnsw': HnswSearcher}
