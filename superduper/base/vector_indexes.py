"""Loaded vector indexes: built from a listener's outputs, kept current, saved and reloaded, and searched.

Once an index is loaded a search touches no metadata: the component, its models and its searcher live here. A
saved index (its vectors and HNSW graph, in the artifact store) is reloaded at startup and compared with the
outputs table, so rows that changed while it was not running are caught up without recomputing embeddings.
"""

from __future__ import annotations

import io
import logging
import math
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from superduper.base.exceptions import ComponentError, InvalidValue, NotFound, QueryError
from superduper.base.keys import dump_key, load_key
from superduper.base.query import Compare, Condition

if TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer
    from superduper.components.vector_index import VectorIndex

#: ANN candidates taken per expected match: the n nearest matches lie deeper than n / share, by chance
OVERSAMPLE = 6

log = logging.getLogger('superduper')
AUTO_HNSW_FROM = 10_000
SOURCE = '_source'


class LoadedIndex:
    def __init__(self, component: 'VectorIndex', searcher: Any):
        self.component = component
        self.searcher = searcher
        self.dirty = False


class VectorIndexes:
    def __init__(self, db: 'Datalayer'):
        self.db = db
        self._loaded: dict[str, LoadedIndex] = {}

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def build(self, index: 'VectorIndex') -> None:
        """A new searcher over every vector in the index's outputs table, saved to the artifact store."""
        if self._pushdown(index):
            return
        outputs = index.indexing_listener.outputs
        count = self.db.execute(self.db[outputs].count())
        loaded = LoadedIndex(index, self._new_searcher(index, count))
        if loaded.searcher is not None:
            for ids, vectors in self._vectors(outputs):
                loaded.searcher.upsert(ids, vectors)
        self._attach(loaded)
        self.save(loaded)

    def _pushdown(self, index: 'VectorIndex') -> bool:
        """Use pgvector where the vectors are stored natively in PostgreSQL (nothing to load, save or follow)."""
        outputs = index.indexing_listener.outputs
        self.db.table_info(outputs)  # binds the declared column types
        native = index.dimension(self.db) is not None and self.db.databackend.native_vectors(outputs, outputs)
        if index.searcher == 'pgvector' and not native:
            raise ComponentError(
                f'VectorIndex {index.identifier!r}: searcher="pgvector" needs PostgreSQL with the vector extension'
            )
        if not native or index.searcher not in ('auto', 'pgvector'):
            return False
        from superduper.vector_search.pgvector import PgVectorSearcher

        searcher = PgVectorSearcher(self.db, index)
        searcher.build()
        self._loaded[index.identifier] = LoadedIndex(index, searcher)
        return True

    def _new_searcher(self, index: 'VectorIndex', count: int) -> Any:
        """A searcher of the index's kind; ``None`` while the listener has stored no output to give the vectors'
        length (it is made with the first ones)."""
        from superduper.vector_search.exact import ExactSearcher

        if index.dimension(self.db) is None:
            return None
        kind = index.searcher
        if kind == 'auto':
            kind = 'hnsw' if count >= AUTO_HNSW_FROM and _has_hnswlib() else 'exact'
        if kind == 'hnsw':
            from superduper.vector_search.hnsw import HnswSearcher

            return HnswSearcher(index.dimension(self.db), index.measure)
        return ExactSearcher(index.dimension(self.db), index.measure)

    def _attach(self, loaded: LoadedIndex) -> None:
        index = loaded.component
        previous = self._loaded.get(index.identifier)
        if previous is not None:
            self._detach(previous)
        self._loaded[index.identifier] = loaded
        outputs = index.indexing_listener.outputs

        def follow(ids: list, deleted: bool) -> None:
            if loaded.searcher is None:  # the first outputs: their type is known now
                self.db.forget_table(outputs)
                loaded.searcher = self._new_searcher(index, len(ids))
                if loaded.searcher is None:
                    return
                deleted, ids = False, [i for batch, _ in self._vectors(outputs) for i in batch]  # all there are
            try:
                if deleted:
                    loaded.searcher.remove(ids)
                else:
                    for found, vectors in self._vectors(outputs, ids):
                        loaded.searcher.upsert(found, vectors)
            except Exception:
                # the index in memory may miss these rows: drop it, the next search reopens it and catches up
                # with the outputs table (the failure is shown in ``db.status()`` until then)
                self._detach(loaded)
                if self._loaded.get(index.identifier) is loaded:
                    del self._loaded[index.identifier]
                raise
            loaded.dirty = True

        follow.index_uuid = index.uuid  # type: ignore[attr-defined]
        follow.problem_name = f'VectorIndex {index.identifier!r} on {outputs}'  # type: ignore[attr-defined]
        self.db.listening.hooks.setdefault(outputs, []).append(follow)
        self.db.listening.problems.pop(follow.problem_name, None)  # opened again: caught up

    def _detach(self, loaded: LoadedIndex) -> None:
        outputs = loaded.component.indexing_listener.outputs
        hooks = self.db.listening.hooks.get(outputs, [])
        self.db.listening.hooks[outputs] = [h for h in hooks if getattr(h, 'index_uuid', None) != loaded.component.uuid]

    def drop(self, index: 'VectorIndex') -> None:
        loaded = self._loaded.pop(index.identifier, None)
        if loaded is not None and loaded.component.uuid == index.uuid:
            self._detach(loaded)
        key = self.db.metadata.index_state(index.uuid)
        self.db.metadata.set_index_state(index.uuid, None)
        if key:
            self.db.artifact_store.delete(key)

    def save(self, loaded: LoadedIndex) -> None:
        if loaded.searcher is None or loaded.searcher.kind == 'pgvector':
            return
        state = loaded.searcher.state()
        buffer = io.BytesIO()
        ids = dump_key(state.pop('ids'))
        np.savez(buffer, ids=np.array(ids), kind=np.array(loaded.searcher.kind), **state)
        key = self.db.artifact_store.put_bytes(buffer.getvalue())
        previous = self.db.metadata.index_state(loaded.component.uuid)
        self.db.metadata.set_index_state(loaded.component.uuid, key)
        if previous and previous != key:
            self.db.artifact_store.delete(previous)
        loaded.dirty = False

    def close(self) -> None:
        for loaded in self._loaded.values():
            if loaded.dirty:
                self.save(loaded)

    def get(self, identifier: str) -> LoadedIndex:
        loaded = self._loaded.get(identifier)
        if loaded is None:
            if identifier not in self.db.metadata.identifiers('VectorIndex'):
                existing = ', '.join(self.db.metadata.identifiers('VectorIndex')) or '(none)'
                raise NotFound(f'no vector index named {identifier!r}; existing: {existing}')
            loaded = self._open(self.db.load('VectorIndex', identifier))
        return loaded

    def _open(self, index: 'VectorIndex') -> LoadedIndex:
        """Reload a saved index and catch up with the outputs table; build it again if nothing was saved."""
        if self._pushdown(index):
            return self._loaded[index.identifier]
        key = self.db.metadata.index_state(index.uuid)
        if key is None:
            self.build(index)
            return self._loaded[index.identifier]
        with np.load(io.BytesIO(self.db.artifact_store.get_bytes(key))) as saved:
            state = {name: saved[name] for name in saved.files}
        state['ids'] = load_key(str(state['ids']))
        searcher = self._new_searcher(index, 0) if str(state.pop('kind')) == 'exact' else self._hnsw(index)
        searcher.restore(state)
        loaded = LoadedIndex(index, searcher)
        self._catch_up(loaded)
        self._attach(loaded)
        return loaded

    def _hnsw(self, index: 'VectorIndex') -> Any:
        from superduper.vector_search.hnsw import HnswSearcher

        return HnswSearcher(index.dimension(self.db), index.measure)

    def _catch_up(self, loaded: LoadedIndex) -> None:
        searcher = loaded.searcher
        seen = set()
        changed = 0
        for ids, vectors in self._vectors(loaded.component.indexing_listener.outputs):
            seen.update(ids)
            prepared = searcher.prepare(vectors)
            positions = [searcher.positions.get(i) for i in ids]
            stale = [
                k for k, p in enumerate(positions)
                if p is None or not searcher.alive[p] or not np.array_equal(searcher.matrix[p], prepared[k])
            ]
            if stale:
                searcher.upsert([ids[k] for k in stale], vectors[stale])
                changed += len(stale)
        gone = [i for i, p in searcher.positions.items() if searcher.alive[p] and i not in seen]
        searcher.remove(gone)
        if changed or gone:
            log.info('vector index %r: caught up with %d changed and %d deleted rows',
                     loaded.component.identifier, changed, len(gone))
            loaded.dirty = True

    def _vectors(self, outputs: str, ids: Sequence[Any] | None = None):
        """Batches of (ids, vector matrix) from an outputs table (only ``ids`` if given), skipping empty outputs."""
        query = self.db[outputs].select(SOURCE, outputs)
        chunks = [None] if ids is None else [list(ids[i : i + 1000]) for i in range(0, len(ids), 1000)]
        for chunk in chunks:
            q = query if chunk is None else query.filter(Compare(SOURCE, 'in', tuple(chunk)))
            for batch in self.db.execute(q).batches():
                rows = [r for r in batch if r[outputs] is not None]
                if rows:
                    yield [r[SOURCE] for r in rows], np.stack([r[outputs] for r in rows])

    # ---- search -------------------------------------------------------------------------------------------------
    def encode(self, loaded: LoadedIndex, spec: Any) -> np.ndarray:
        index = loaded.component
        if isinstance(spec, dict):
            if len(spec) != 1:
                raise QueryError(f'like() takes one {{key: value}} to encode, got keys {list(spec)}')
            key, value = next(iter(spec.items()))
            listeners = [x for x in (index.indexing_listener, index.compatible_listener) if x is not None]
            for listener in listeners:
                if listener.key == key:
                    vector = listener.model.predict(value)
                    break
            else:
                keys = ', '.join(repr(x.key) for x in listeners)
                raise QueryError(f'vector index {index.identifier!r} cannot encode key {key!r}; it encodes {keys}')
        else:
            vector = spec
        try:
            vector = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidValue(f'like() needs a vector or {{key: value}}, got {type(spec).__name__}') from None
        if loaded.searcher is not None and vector.shape != (loaded.searcher.dim,):
            raise InvalidValue(
                f'vector index {index.identifier!r} holds vectors of {loaded.searcher.dim} values; '
                f'the query vector has shape {vector.shape}'
            )
        return vector

    def search(self, loaded: LoadedIndex, vector: np.ndarray, n: int, where: Condition | None,
               rows: 'FilteredRows', primary_key: tuple[str, ...]) -> list[tuple[Any, float]]:
        """The ``n`` nearest rows, among those matching ``where`` if given.

        Few matching rows: exact search over exactly those. Many: ANN candidates checked against the filter, as many
        as the share of matching rows says are needed for ``n`` to pass, widening until they do. The crossover is
        where reading the matching ids costs about as much as searching for the extra candidates."""
        searcher = loaded.searcher
        if searcher is None:  # nothing indexed yet
            return []
        if searcher.kind == 'pgvector':
            return searcher.search(vector, n, where, primary_key)
        if where is None:
            return searcher.search(vector, n)
        total = len(searcher)
        matching = rows.count()
        if matching == 0 or total == 0:
            return []
        if matching <= min(self.db.cfg.exact_filter_limit, math.sqrt(8 * n * total)):
            return searcher.search(vector, n, candidates=rows.ids(None))
        k = min(total, max(4 * n, math.ceil(OVERSAMPLE * n * total / matching)))
        while True:
            candidates = searcher.search(vector, k)
            allowed = set(rows.ids([c for c, _ in candidates]))
            hits = [c for c in candidates if c[0] in allowed]
            if len(hits) >= n or k >= total:
                return hits[:n]
            k = min(total, k * 4)


class FilteredRows(Protocol):
    """The rows a filtered vector search may return, as the database sees them."""

    def count(self) -> int: ...

    def ids(self, among: list | None) -> list: ...


def _has_hnswlib() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True

