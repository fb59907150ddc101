"""HNSW search with hnswlib (``pip install 'superduper[hnsw]'``), over the positions of the exact store.

The exact store stays alongside: it answers filtered searches over small candidate sets exactly, and lets a saved
index be compared with the table when it is loaded again.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from superduper.vector_search.exact import ExactSearcher

SPACES = {'cosine': 'ip', 'dot': 'ip', 'l2': 'l2'}  # cosine rows are normalised by the store


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

    def _new_index(self, capacity: int) -> Any:
        index = _hnswlib().Index(space=SPACES[self.measure], dim=self.dim)
        index.init_index(max_elements=capacity, ef_construction=self.ef_construction, M=self.M)
        index.set_ef(self.ef)
        self._current_ef = self.ef
        return index

    def upsert(self, ids: Sequence[Any], vectors: Any) -> np.ndarray:
        positions = super().upsert(ids, vectors)
        if len(self.ids) > self.index.get_max_elements():
            self.index.resize_index(max(len(self.ids), int(self.index.get_max_elements() * 1.5)))
        for pos in positions:
            if pos < self.index.element_count:
                try:
                    self.index.unmark_deleted(int(pos))
                except RuntimeError:  # not deleted
                    pass
        self.index.add_items(self.matrix[positions], positions)
        return positions

    def remove(self, ids: Iterable[Any]) -> np.ndarray:
        positions = super().remove(ids)
        for pos in positions:
            try:
                self.index.mark_deleted(int(pos))
            except RuntimeError:  # already deleted
                pass
        return positions

    def search(self, query: Any, n: int, candidates: Sequence[Any] | None = None) -> list[tuple[Any, float]]:
        alive = len(self)
        if candidates is not None or n >= alive or alive < 1000:
            return super().search(query, n, candidates)
        q = np.asarray(query, dtype=np.float32)
        if q.shape != (self.dim,):
            q = self.prepare(q)[0]  # raises for a wrong shape
        elif self.measure == 'cosine':
            norm = float(np.sqrt(q @ q))
            q = q / norm if norm else q
        ef = max(self.ef, 2 * n)  # a wider beam for the candidate lists of filtered searches
        if ef != self._current_ef:
            self.index.set_ef(ef)
            self._current_ef = ef
        try:
            labels, distances = self.index.knn_query(q, k=n)
        except RuntimeError:  # too few reachable elements (many deleted): answer exactly
            return super().search(query, n)
        ids = self.ids
        if self.measure == 'l2':
            return [(ids[p], -d) for p, d in zip(labels[0].tolist(), distances[0].tolist())]
        return [(ids[p], 1.0 - d) for p, d in zip(labels[0].tolist(), distances[0].tolist())]

    def save(self, folder: str) -> None:
        super().save(folder)
        self.index.save_index(os.path.join(folder, 'hnsw.bin'))

    def load(self, folder: str) -> None:
        super().load(folder)
        self.index = _hnswlib().Index(space=SPACES[self.measure], dim=self.dim)
        self.index.load_index(os.path.join(folder, 'hnsw.bin'), max_elements=max(len(self.ids), 1024),
                              allow_replace_deleted=False)
        self.index.set_ef(self.ef)
        self._current_ef = self.ef


SEARCHERS = {'exact': ExactSearcher, 'hnsw': HnswSearcher}
