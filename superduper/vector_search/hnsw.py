"""HNSW search with hnswlib (``pip install 'superduper[hnsw]'``), over the positions of the exact store.

The exact store stays alongside: it answers filtered searches over small candidate sets exactly, and holds the
vectors not yet in the graph. A written vector is not put into the graph at once: its old node (if any) is only
marked deleted, and the position waits in ``pending``, searched exactly next to the graph, until ``flush`` adds the
pending vectors in one parallel batch as new nodes (reusing deleted slots). Replacing a node in place costs hnswlib
about three times as much as adding one, and one write at a time costs more than a batch: following a stream of
writes, or catching up with a thousand changed rows, costs little until the graph is next flushed (when enough
have waited, or when the index is saved).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from superduper.vector_search.exact import ExactSearcher

SPACES = {'cosine': 'ip', 'dot': 'ip', 'l2': 'l2'}  # cosine rows are normalised by the store
FLUSH_CHUNK = 10_000  # vectors added to the graph per call (bounds the copy handed to hnswlib)


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
        self.position_of: dict[int, int] = {}  # label -> position
        self.next_label = 0
        self.pending: set[int] = set()  # alive positions whose vector is not in the graph

    def _new_index(self, capacity: int) -> Any:
        index = _hnswlib().Index(space=SPACES[self.measure], dim=self.dim)
        index.init_index(max_elements=capacity, ef_construction=self.ef_construction, M=self.M,
                         allow_replace_deleted=True)
        index.set_ef(self.ef)
        self._current_ef = self.ef
        return index

    # ---- writes -----------------------------------------------------------------------------------------------
    def upsert(self, ids: Sequence[Any], vectors: Any) -> np.ndarray:
        positions = super().upsert(ids, vectors)
        if len(self.labels) < len(self.ids):
            grown = np.full(len(self.ids), -1, dtype=np.int64)
            grown[: len(self.labels)] = self.labels
            self.labels = grown
        for pos in positions.tolist():
            self._unlink(pos)
            self.pending.add(pos)
        return positions

    def remove(self, ids: Iterable[Any]) -> np.ndarray:
        positions = super().remove(ids)
        for pos in positions.tolist():
            self._unlink(pos)
            self.pending.discard(pos)
        return positions

    def _unlink(self, pos: int) -> None:
        """The graph stops answering for this position (its node is marked deleted, its slot reused later)."""
        label = int(self.labels[pos])
        if label >= 0:
            self.index.mark_deleted(label)
            del self.position_of[label]
            self.labels[pos] = -1

    def flush(self) -> None:
        """Add the pending vectors to the graph, as new nodes."""
        pending = np.array(sorted(self.pending), dtype=np.int64)
        for start in range(0, len(pending), FLUSH_CHUNK):
            positions = pending[start : start + FLUSH_CHUNK]
            needed = self.index.element_count + len(positions)
            if needed > self.index.get_max_elements():
                self.index.resize_index(max(needed, int(self.index.get_max_elements() * 1.5)))
            labels = np.arange(self.next_label, self.next_label + len(positions), dtype=np.int64)
            self.index.add_items(self.matrix[positions], labels, replace_deleted=True)
            self.next_label += len(positions)
            self.labels[positions] = labels
            self.position_of.update(zip(labels.tolist(), positions.tolist()))
        self.pending.clear()

    # ---- reads ------------------------------------------------------------------------------------------------
    def reads_only(self, n: int, candidates: Sequence[Any] | None = None) -> bool:
        return candidates is not None or self._ef_for(n) == self._current_ef  # else the graph's ef is set first

    def _ef_for(self, k: int) -> int:
        return max(self.ef, 2 * k)  # a wider beam for the candidate lists of filtered searches

    def search(self, query: Any, n: int, candidates: Sequence[Any] | None = None) -> list[tuple[Any, float]]:
        alive = len(self)
        if candidates is not None or n >= alive or alive < 1000 or len(self.pending) * 2 > alive:
            return super().search(query, n, candidates)
        q = self.prepare(query)[0]
        hits = self._graph_search(q, min(n, alive - len(self.pending)))
        if hits is None:  # too few reachable nodes (many deleted): answer exactly
            return super().search(query, n)
        if self.pending:
            waiting = np.fromiter(self.pending, dtype=np.int64, count=len(self.pending))
            scores = self.scores(q, waiting)
            top = np.argsort(-scores)[:n]
            hits += list(zip(waiting[top].tolist(), scores[top].tolist()))
            hits.sort(key=lambda h: -h[1])
        ids = self.ids
        return [(ids[p], s) for p, s in hits[:n]]

    def _graph_search(self, q: np.ndarray, k: int) -> list[tuple[int, float]] | None:
        """(position, score) of the ``k`` nearest nodes of the graph."""
        if k <= 0:
            return []
        ef = self._ef_for(k)
        if ef != self._current_ef:
            self.index.set_ef(ef)
            self._current_ef = ef
        try:
            labels, distances = self.index.knn_query(q, k=k)
        except RuntimeError:
            return None
        position_of = self.position_of
        if self.measure == 'l2':
            return [(position_of[lb], -d) for lb, d in zip(labels[0].tolist(), distances[0].tolist())]
        return [(position_of[lb], 1.0 - d) for lb, d in zip(labels[0].tolist(), distances[0].tolist())]

    # ---- persistence ------------------------------------------------------------------------------------------
    def save(self, folder: str) -> None:
        self.flush()
        super().save(folder)
        np.save(os.path.join(folder, 'labels.npy'), self.labels[: len(self.ids)])
        np.save(os.path.join(folder, 'next_label.npy'), np.array([self.next_label], dtype=np.int64))
        self.index.save_index(os.path.join(folder, 'hnsw.bin'))

    def load(self, folder: str) -> None:
        super().load(folder)
        self.labels = np.load(os.path.join(folder, 'labels.npy'))
        linked = np.flatnonzero(self.labels >= 0)
        self.position_of = dict(zip(self.labels[linked].tolist(), linked.tolist()))
        self.next_label = int(np.load(os.path.join(folder, 'next_label.npy'))[0])  # deleted nodes keep theirs
        self.pending = set(np.flatnonzero(self.alive & (self.labels < 0)).tolist())
        self.index = _hnswlib().Index(space=SPACES[self.measure], dim=self.dim)
        self.index.load_index(os.path.join(folder, 'hnsw.bin'), max_elements=max(len(self.ids), 1024),
                              allow_replace_deleted=True)
        self.index.set_ef(self.ef)
        self._current_ef = self.ef


SEARCHERS = {'exact': ExactSearcher, 'hnsw': HnswSearcher}
