"""Loaded vector indexes: built from a listener's outputs, kept current with the database, saved and reloaded,
and searched.

An index follows its outputs table, not the process that wrote it: every write of outputs is numbered
(``superduper.backends.base.OutputLog``), and before a search the index reads the rows and deletions numbered
after the last it has seen, at most once per poll interval (at once after a write through this process). A saved
index (vectors, HNSW graph and the number it is current to, as files in the artifact store) is reopened by mapping
the files and reading only what changed since it was saved.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from superduper.backends.base import OUTPUT_SEQ
from superduper.base.exceptions import ComponentError, InvalidValue, NotFound, QueryError
from superduper.base.query import Compare, Condition
from superduper.base.rwlock import ReadWriteLock
from superduper.runtime.artifact_gc import HeldArtifacts, index_holder
from superduper.runtime.index_switch import IndexSwitches
from superduper.runtime.matching_rows import MAX_ROWS, Matching, MatchingRows
from superduper.vector_search.quantized import QUANTIZATIONS

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.components.vector_index import VectorIndex

#: ANN candidates taken per expected match: the n nearest matches lie about n / share deep, more or less by chance
MARGIN = 3
#: the graph's beam per candidate asked for: the rows matching far down the list (beyond the query's own cluster)
#: are ranked well only by a wide beam (recall@10 at 10% of 100k clustered rows, 200 queries: 0.90 at 2, 0.94 at 4,
#: 0.97 at 6 for 12% fewer QPS than 4, 0.98 at 8; 1.0 at 50% with 2)
BEAM = 6
WIDE_BELOW = 0.25  # the share of matching rows below which the beam is widened (above, the matches lie near)
RESCAN_CHUNK = 10_000  # vectors compared with the database's at a time when an index catches up with a whole table
SHARES_KEPT = 256  # filters whose share of matching rows is remembered, per process

log = logging.getLogger('superduper')
AUTO_HNSW_FROM = 10_000
NATIVE = ('native', 'pgvector')  # the searcher names asking for the database's own search
SOURCE = '_source'
STATE_FORMAT = 3
LOOKS = 3  # tries of one look when other threads move the index meanwhile
FLUSH_CHUNK = 10_000  # vectors read while building an index that are added to its graph together
FLUSH_AT = 2000  # vectors waiting outside an HNSW graph (searched exactly) before they are added to it
SAVE_AFTER = 1000  # rows changed since the saved state that make a closing process save the index again


class LoadedIndex:
    def __init__(self, component: 'VectorIndex', searcher: Any, seen: int | None = None, native: bool = False):
        self.component = component
        self.searcher = searcher
        #: the database searches the outputs table itself: nothing to read, follow or save here
        self.native = native
        #: the index holds the outputs table as of this write number (``None``: not known, read it all)
        self.seen = seen
        self.low = seen  # an unordered log: where the next look starts (the previous look's start)
        self.checked = -math.inf  # when the database was last looked at (monotonic clock)
        self.stale = False  # a write through this process changed the outputs: look before the next search
        self.changed = 0  # rows changed since the index was saved
        #: guards the searcher and ``seen`` in memory (searches read, updates write); never held while waiting on the
        #: database
        self.lock = ReadWriteLock()

    @property
    def outputs(self) -> str:
        return self.component.indexing_listener.outputs


class VectorIndexes:
    def __init__(self, db: 'Runtime'):
        self.db = db
        self._loaded: dict[str, LoadedIndex] = {}
        #: (index uuid, filter) -> share of rows it matched, last seen: plans only, never what is returned
        self._shares: dict[tuple, float] = {}
        self._shares_lock = threading.Lock()
        self.matching = MatchingRows()
        self._generation = db.components_generation()
        self.switches = IndexSwitches(db)

    @property
    def log(self) -> Any:
        return self.db.databackend.output_log()

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def build(self, index: 'VectorIndex', attach: bool = True) -> None:
        """A new searcher over every vector in the index's outputs table, saved to the artifact store; searched
        from now on here if ``attach`` (else it is only saved: an index being switched to)."""
        if not attach and self._native_searcher(index) is not None:
            return
        if attach and self._pushdown(index):
            return
        self.db.listening.versioned(index.indexing_listener)
        outputs = index.indexing_listener.outputs
        count = self.db.execute(self.db[outputs].count())
        loaded = LoadedIndex(index, self._new_searcher(index, count))
        if loaded.searcher is not None:
            loaded.seen = loaded.low = self._read_all(loaded.searcher, outputs)
        if attach:
            self._attach(loaded)
        self.save(loaded)

    def _read_all(self, searcher: Any, outputs: str) -> int:
        """Put every vector of ``outputs`` into ``searcher``; returns the write number they are current to (read
        first: a row written meanwhile is read again by the next look)."""
        head = self.log.head(outputs)
        for ids, vectors in self._vectors(outputs):
            searcher.upsert(ids, vectors)
            if len(searcher.pending) >= FLUSH_CHUNK:  # into the graph as they come: never held twice
                searcher.flush()
        searcher.flush()
        return head[0] if head is not None else 0

    def _pushdown(self, index: 'VectorIndex') -> bool:
        searcher = self._native_searcher(index)
        if searcher is None:
            return False
        self._loaded[index.identifier] = LoadedIndex(index, searcher, native=True)
        return True

    def _native_searcher(self, index: 'VectorIndex') -> Any:
        """The database's own search where it stores the index's vectors natively (pgvector, ClickHouse, DuckDB):
        nothing to load, save or follow; ``None`` where it does not, or the index asks for an in-process one."""
        outputs = index.indexing_listener.outputs
        self.db.table_info(outputs)  # binds the declared column types
        native = index.dimension(self.db) is not None and self.db.databackend.native_vectors(outputs, outputs)
        if index.searcher in NATIVE and not native:
            raise ComponentError(
                f'VectorIndex {index.identifier!r}: searcher={index.searcher!r} needs vectors stored natively by the '
                'database (PostgreSQL with the vector extension, ClickHouse, DuckDB)'
            )
        if not native or index.searcher not in ('auto', *NATIVE) or index.quantization is not None:
            return None
        searcher = self.db.databackend.native_searcher(self.db, index)
        searcher.build()
        return searcher

    def _new_searcher(self, index: 'VectorIndex', count: int, kind: str | None = None) -> Any:
        """A searcher of the index's kind; ``None`` while the listener has stored no output to give the vectors'
        length (it is made with the first ones)."""
        from superduper.vector_search.exact import ExactSearcher

        dim = index.dimension(self.db)
        if dim is None:
            return None
        kind = kind or index.quantization or index.searcher
        if kind in QUANTIZATIONS:
            from superduper.vector_search.quantized import QuantizedSearcher

            return QuantizedSearcher(dim, index.measure, kind)
        if kind == 'auto':
            kind = 'hnsw' if count >= AUTO_HNSW_FROM and _has_hnswlib() else 'exact'
        if kind == 'hnsw':
            from superduper.vector_search.hnsw import HnswSearcher

            return HnswSearcher(dim, index.measure)
        return ExactSearcher(dim, index.measure)

    def _attach(self, loaded: LoadedIndex) -> None:
        """Make ``loaded`` the index searched under its name; writes of outputs through this process make it look at
        the database before the next search (a write is found by its number, like any other)."""
        index = loaded.component
        previous = self._loaded.get(index.identifier)
        if previous is not None:
            self._detach(previous)
        self._loaded[index.identifier] = loaded

        def written(ids: list, deleted: bool) -> None:
            loaded.stale = True

        written.index_uuid = index.uuid  # type: ignore[attr-defined]
        self.db.listening.hooks.setdefault(loaded.outputs, []).append(written)

    def _detach(self, loaded: LoadedIndex) -> None:
        hooks = self.db.listening.hooks.get(loaded.outputs, [])
        self.db.listening.hooks[loaded.outputs] = [
            h for h in hooks if getattr(h, 'index_uuid', None) != loaded.component.uuid
        ]

    def drop(self, index: 'VectorIndex') -> None:
        loaded = self._loaded.pop(index.identifier, None)
        if loaded is not None and loaded.component.uuid == index.uuid:
            self._detach(loaded)
        self.db.metadata.set_index_state(index.uuid, None)
        self.db.artifacts.release_all(index_holder(index.uuid, ''))
        self.switches.cancelled(index)

    def save(self, loaded: LoadedIndex) -> None:
        """Store the index's files and the write number they are current to, held by this state; the previous
        state is released (another process that saved meanwhile keeps its own state instead)."""
        if loaded.searcher is None or loaded.native:
            return
        index_uuid = loaded.component.uuid
        previous = self.db.metadata.index_state(index_uuid)
        collector = self.db.artifacts
        with tempfile.TemporaryDirectory() as tmp:
            folder = os.path.join(tmp, 'index')
            os.mkdir(folder)
            with loaded.lock.write():
                loaded.searcher.save(folder)
                seen, changed = loaded.seen, loaded.changed
            held = HeldArtifacts(self.db.artifact_store, collector.refs, holder='')
            files = held.put_file(folder)
            key = held.put_bytes(json.dumps({'format': STATE_FORMAT, 'kind': loaded.searcher.kind, 'seen': seen,
                                             'files': files}).encode())
            held.holder = index_holder(index_uuid, key)
            collector.adopt()
            held.flush()
        if self.db.metadata.replace_index_state(index_uuid, previous, key):
            if previous and previous != key:
                collector.release(index_holder(index_uuid, previous))
        elif self.db.metadata.index_state(index_uuid) != key:
            collector.release(index_holder(index_uuid, key))
        loaded.changed -= changed

    def state_files(self, key: str) -> list[str]:
        """The folder of files a saved state names (none for a state in an older format)."""
        manifest = _manifest(self.db.artifact_store, key)
        return [manifest['files']] if manifest is not None else []

    def close(self) -> None:
        """Save the indexes that fell behind their saved state by enough that catching up would cost more than
        saving (a few rows are read back cheaply by the next process that opens the index)."""
        for loaded in self._loaded.values():
            searcher = loaded.searcher
            if searcher is not None and not loaded.native and loaded.changed >= max(SAVE_AFTER, len(searcher) // 100):
                self.save(loaded)

    def get(self, identifier: str) -> LoadedIndex:
        """The index named ``identifier``, current with the database as of at most one poll interval ago (a write
        through this process: as of now)."""
        self._drop_replaced()
        loaded = self._loaded.get(identifier)
        if loaded is None:
            loaded = self._open_serving(identifier)
        self.follow(loaded)
        return loaded

    def _open_serving(self, identifier: str) -> LoadedIndex:
        """Open the version searches use (during a switch: the old one, until the new one is complete)."""
        record = self.switches.serving(identifier)
        if record is None:
            existing = ', '.join(self.db.metadata.identifiers('VectorIndex')) or '(none)'
            raise NotFound(f'no vector index named {identifier!r}; existing: {existing}')
        try:
            return self._open(self.db.load_record(record))
        except Exception:
            again = self.switches.serving(identifier)
            if again is None or again['uuid'] == record['uuid']:
                raise
            # switched meanwhile by another process (the old version's outputs went): open the new one
            return self._open(self.db.load_record(again))

    def _drop_replaced(self) -> None:
        """Forget loaded indexes that another process removed or replaced with a new version."""
        generation = self.db.components_generation()
        if generation == self._generation:
            return
        self._generation = generation
        for identifier, loaded in list(self._loaded.items()):
            record = self.switches.serving(identifier)
            if record is None or record['uuid'] != loaded.component.uuid:
                self._detach(loaded)
                self._loaded.pop(identifier, None)

    def _open(self, index: 'VectorIndex') -> LoadedIndex:
        """Reopen a saved index (then catch up with what changed since); build it again if nothing was saved."""
        if self._pushdown(index):
            return self._loaded[index.identifier]
        self.db.listening.versioned(index.indexing_listener)
        for _ in range(LOOKS):  # another process may save a newer state and delete this one meanwhile
            key = self.db.metadata.index_state(index.uuid)
            if key is None:
                break
            try:
                loaded = self._reopen(index, key)
            except NotFound:
                continue
            if loaded is not None:
                loaded.stale = True
                self._attach(loaded)
                return loaded
            break
        self.build(index)
        return self._loaded[index.identifier]

    def _reopen(self, index: 'VectorIndex', key: str) -> LoadedIndex | None:
        """The saved index; ``None`` if it was saved in an older format (build it again)."""
        store = self.db.artifact_store
        manifest = _manifest(store, key)
        if manifest is None or manifest.get('format') != STATE_FORMAT:
            return None
        searcher = self._new_searcher(index, 0, kind=manifest['kind'])
        searcher.load(store.get_file(manifest['files']))
        return LoadedIndex(index, searcher, seen=manifest['seen'])

    # ---- following the outputs table ----------------------------------------------------------------------------
    def follow(self, loaded: LoadedIndex) -> None:
        """Bring the index up to date with its outputs table, if it was last looked at a poll interval ago or a
        write through this process changed the outputs since."""
        if loaded.native:
            return
        now = time.monotonic()
        if not loaded.stale and now - loaded.checked < self.db.cfg.poll_interval:
            return
        loaded.stale = False  # before looking: a write landing meanwhile asks for another look
        loaded.checked = now
        problem = f'VectorIndex {loaded.component.identifier!r} on {loaded.outputs}'
        try:
            for _ in range(LOOKS):
                if self._look(loaded):
                    break
            self._flush_if_due(loaded)
            self._grow_if_due(loaded)
        except Exception as e:  # searches go on with what the index holds; the next search looks again
            loaded.stale = True
            log.exception('%s could not catch up with its outputs', problem)
            self.db.listening.problems[problem] = f'{problem} could not catch up: {type(e).__name__}: {e}'
            return
        self.db.listening.problems.pop(problem, None)

    def _flush_if_due(self, loaded: LoadedIndex) -> None:
        """Add the vectors waiting outside an ANN graph once enough wait that scanning them costs searches time."""
        if loaded.searcher is None or loaded.native:  # no vectors yet, or none here
            return
        pending = getattr(loaded.searcher, 'pending', ())
        if len(pending) >= max(FLUSH_AT, len(loaded.searcher) // 100):
            with loaded.lock.write():
                loaded.searcher.flush()

    def _grow_if_due(self, loaded: LoadedIndex) -> None:
        """An index left to choose its searcher (``'auto'``) that started exact, small, gets an HNSW graph once it
        holds ``AUTO_HNSW_FROM`` vectors: built beside from a copy, swapped in if nothing changed meanwhile (else
        the next look tries again), then saved, so that other processes open it as HNSW too."""
        searcher, index = loaded.searcher, loaded.component
        if searcher is None or searcher.kind != 'exact' or index.searcher != 'auto' or index.quantization \
                or len(searcher) < AUTO_HNSW_FROM or not _has_hnswlib():
            return
        from superduper.vector_search.hnsw import HnswSearcher

        with loaded.lock.read():
            version, positions = searcher.version, searcher.alive_positions(None)
            ids, vectors = [searcher.ids[p] for p in positions.tolist()], searcher.vectors(positions)
        grown = HnswSearcher(searcher.dim, index.measure)
        grown.upsert(ids, vectors)
        grown.flush()
        with loaded.lock.write():
            if loaded.searcher is not searcher or searcher.version != version:
                return
            loaded.searcher = grown
        self.save(loaded)

    def _look(self, loaded: LoadedIndex) -> bool:
        """Read what changed since the index's write number and apply it; ``False`` if another thread moved the
        index meanwhile (nothing applied: look again)."""
        outputs, log = loaded.outputs, self.log
        if loaded.searcher is None:
            return self._first_vectors(loaded)
        since, low = loaded.seen, loaded.low
        head = log.head(outputs)
        if head is None:
            return True
        top, floor = head
        start = since if log.ordered or low is None else low
        if since == top and start == since:
            return True
        deleted = None if start is None or start < floor else log.deleted(outputs, start, top)
        if deleted is None:  # never read, or deletions since were forgotten: compare with the whole table
            return self._rescan(loaded, since)
        latest: dict[Any, tuple[int, Any]] = {}
        query = self.db[outputs].select(SOURCE, outputs, OUTPUT_SEQ).filter(
            Compare(OUTPUT_SEQ, '>', start), Compare(OUTPUT_SEQ, '<=', top))
        for row in self.db.execute(query):
            latest[row[SOURCE]] = (row[OUTPUT_SEQ], row[outputs])
        for source, seq in deleted:
            if source not in latest or latest[source][0] < seq:
                latest[source] = (seq, None)
        upserts = [(s, v) for s, (_, v) in latest.items() if v is not None]
        removed = [s for s, (_, v) in latest.items() if v is None]
        with loaded.lock.write():
            if loaded.seen != since:
                return False
            if upserts:
                loaded.searcher.upsert([s for s, _ in upserts], np.stack([v for _, v in upserts]))
            if removed:
                loaded.searcher.remove(removed)
            loaded.low, loaded.seen = since, top
            loaded.changed += len(latest)
        return True

    def _first_vectors(self, loaded: LoadedIndex) -> bool:
        """The index was made before its listener stored an output: make its searcher once outputs are typed."""
        self.db.forget_table(loaded.outputs)
        native = self._native_searcher(loaded.component)
        if native is not None:  # stored natively: the database searches them from now on
            with loaded.lock.write():
                if loaded.searcher is not None:
                    return False
                loaded.searcher, loaded.native = native, True
            self._detach(loaded)
            return True
        searcher = self._new_searcher(loaded.component, 0)
        if searcher is None:
            return True
        seen = self._read_all(searcher, loaded.outputs)
        with loaded.lock.write():
            if loaded.searcher is not None:
                return False
            loaded.searcher, loaded.seen, loaded.low = searcher, seen, seen
            loaded.changed += len(searcher)
        return True

    def _rescan(self, loaded: LoadedIndex, since: int | None) -> bool:
        """Compare the index with the whole outputs table: only changed vectors are replaced (an HNSW graph is
        kept, not rebuilt)."""
        head = self.log.head(loaded.outputs)
        top = head[0] if head is not None else 0
        found: dict[Any, np.ndarray] = {}
        for ids, vectors in self._vectors(loaded.outputs):
            found.update(zip(ids, vectors))
        with loaded.lock.write():
            if loaded.seen != since:
                return False
            searcher = loaded.searcher
            ids = list(found)
            stale = []
            for start in range(0, len(ids), RESCAN_CHUNK):  # a chunk at a time: no second copy of every vector
                chunk = ids[start : start + RESCAN_CHUNK]
                prepared = searcher.prepare(np.stack([found[i] for i in chunk]))
                positions = np.array([searcher.positions.get(i, -1) for i in chunk], dtype=np.int64)
                known = positions >= 0
                same = np.zeros(len(chunk), dtype=bool)
                same[known] = searcher.alive[positions[known]] & np.all(
                    searcher.vectors(positions[known]) == prepared[known], axis=1)
                changed = np.flatnonzero(~same)
                if len(changed):
                    searcher.upsert([chunk[k] for k in changed.tolist()], prepared[changed])
                stale.extend(changed.tolist())
            gone = [i for i, p in searcher.positions.items() if searcher.alive[p] and i not in found]
            searcher.remove(gone)
            loaded.low, loaded.seen = top, top
            loaded.changed += max(len(stale) + len(gone), SAVE_AFTER)  # saved again: the next opening reads little
        if stale or gone:
            log.info('vector index %r: caught up with %d changed and %d deleted rows',
                     loaded.component.identifier, len(stale), len(gone))
        return True

    def _vectors(self, outputs: str):
        """Batches of (ids, vector matrix) of every output in an outputs table, skipping empty outputs."""
        for batch in self.db.execute(self.db[outputs].select(SOURCE, outputs)).batches():
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
        """The ``n`` nearest rows, among those matching ``where`` if given; the plan followed goes to ``rows.plan``.

        With a filter, the matching ids are read once, up to a limit: if no more match, the answer is exact over
        exactly those. Else ANN candidates, as many as the share of matching rows seen by the last searches with
        this filter says are needed for ``n`` to match, are checked against the filter in one read, widened once;
        a filter the candidates keep missing (one that prefers rows far from the query) reads every matching id and
        searches the graph within them. The limit is where reading ids costs about as much as checking candidates."""
        searcher = loaded.searcher
        plan = rows.plan
        plan['searcher'] = 'none' if searcher is None else searcher.kind
        if searcher is None:  # nothing indexed yet
            plan['strategy'] = 'empty'
            return []
        if loaded.native:  # the searcher plans with the share of rows the filter matched last, and learns it
            plan['strategy'] = 'in the database (one query, filter included)'
            key = (loaded.component.uuid, repr(where))
            hits = searcher.search(vector, n, where, primary_key, plan, self._shares.get(key))
            if where is not None and 'share' in plan:
                self._learn(key, plan['share'])
            return hits

        def nearest(k: int, candidates: list | None = None, beam: int | None = None) -> list[tuple[Any, float]]:
            # searches share the lock unless this one changes the searcher; the database is read outside: never
            # waited on with the lock held
            with loaded.lock.read() if searcher.reads_only(k, candidates, beam) else loaded.lock.write():
                return searcher.search(vector, k, candidates=candidates, beam=beam)

        total = len(searcher)
        if where is None:
            if searcher.kind in QUANTIZATIONS:
                plan['strategy'] = 'quantised scan, best candidates rescored exactly'
            else:
                plan['strategy'] = 'ann' if searcher.kind != 'exact' and total >= 1000 else 'exact'
            return nearest(n)
        if total == 0:
            plan['strategy'] = 'empty'
            return []
        key = (loaded.component.uuid, repr(where))
        hits = self._among_matching(loaded, key, vector, n, rows)
        if hits is not None:
            return hits
        started = time.perf_counter()
        hits = self._planned(loaded, key, vector, n, rows, nearest)
        self.matching.planned(key, time.perf_counter() - started)
        return hits

    def _planned(self, loaded: LoadedIndex, key: tuple, vector: np.ndarray, n: int, rows: 'FilteredRows',
                 nearest: Callable[..., list[tuple[Any, float]]]) -> list[tuple[Any, float]]:
        """A filtered search planned on its own: the matching ids read up to a limit, else ANN candidates checked
        against the filter, widened once, else the graph searched within every matching id."""
        searcher, plan, total = loaded.searcher, rows.plan, len(loaded.searcher)
        limit = int(min(self.db.cfg.exact_filter_limit, max(math.sqrt(8 * n * total), 4 * n)))
        share = self._shares.get(key)
        if share is None or share * total <= 1.2 * limit:  # near the limit: look, the estimate may be off
            ids = rows.ids(None, limit=limit + 1)
            if len(ids) <= limit:
                self._learn(key, len(ids) / total)
                plan.update(strategy='exact over the matching ids', matching=len(ids))
                return nearest(n, ids)
            share = share or (limit + 1) / total  # a lower bound: the first search with this filter looks wide
        k = min(total, max(5 * n, math.ceil(MARGIN * n / share)))
        for tries in range(2):
            candidates = nearest(k, beam=(BEAM if share < WIDE_BELOW else 2) * k)
            allowed = set(rows.ids([c for c, _ in candidates])) if candidates else set()
            hits = [c for c in candidates if c[0] in allowed]
            self._learn(key, max(len(allowed), 1) / max(len(candidates), 1))
            plan.update(strategy='ann, candidates checked against the filter', candidates=k, tries=tries + 1)
            if len(hits) >= n or k >= total:
                return hits[:n]
            k = min(total, k * 4)
        ids = rows.ids(None)
        plan.update(strategy='ann within the matching ids', matching=len(ids))
        with loaded.lock.write():  # the graph's beam is set for this search
            return searcher.search_within(vector, n, ids)

    def _among_matching(self, loaded: LoadedIndex, key: tuple, vector: np.ndarray, n: int,
                        rows: 'FilteredRows') -> list[tuple[Any, float]] | None:
        """The ``n`` nearest among the rows the filter matched when last read (``matching_rows``), read now if that
        is due and the filter was searched often enough lately to pay for reading them; ``None`` if none are
        remembered, or a hit no longer matches."""
        searcher, ttl = loaded.searcher, self.db.cfg.poll_interval
        uses = self.matching.used(key, ttl)
        matching = self.matching.fresh(key, searcher, ttl)
        if matching is None:
            share = self._shares.get(key)
            if share is None or not self.matching.due(key, ttl) \
                    or not self.matching.worth_reading(key, uses, share * len(searcher)):
                return None  # a filter used once, or too seldom to pay for reading its rows: planned per search
            matching = self._read_matching(loaded, searcher, key, rows)
            if matching is None:
                return None
        subset, limit = matching.subset, self.db.cfg.exact_filter_limit
        with loaded.lock.read() if searcher.subset_reads_only(n, subset, limit) else loaded.lock.write():
            hits = searcher.search_subset(vector, n, subset, limit)
        if hits is None:  # the vectors changed since the rows were read
            return None
        if hits and rows.count_among([h for h, _ in hits]) < len(hits):
            self.matching.forget(key, ttl)
            return None
        how = 'exact' if searcher.subset_is_exact(n, subset, limit) else 'ann'
        rows.plan.update(strategy=f'{how} among the matching rows read earlier', matching=matching.count)
        return hits

    def _read_matching(self, loaded: LoadedIndex, searcher: Any, key: tuple, rows: 'FilteredRows') -> Matching | None:
        """Read every id the filter matches (the database outside the lock) and keep them as a subset of
        ``searcher``'s vectors."""
        read_at = time.monotonic()
        ids = rows.ids(None, limit=MAX_ROWS + 1)
        if len(ids) > MAX_ROWS:
            self.matching.keep(key, read_at + 10 * self.db.cfg.poll_interval)
            return None
        with loaded.lock.read():
            subset = searcher.subset(ids)
        self.matching.read(time.monotonic() - read_at, len(ids))
        self._learn(key, len(ids) / max(len(searcher), 1))
        matching = Matching(searcher, subset, len(ids), read_at)
        self.matching.keep(key, matching)
        return matching

    def _learn(self, key: tuple, share: float) -> None:
        """Remember the share of rows a filter matched (near the query): the next search with it plans from it."""
        with self._shares_lock:
            self._shares.pop(key, None)
            self._shares[key] = share
            while len(self._shares) > SHARES_KEPT:
                self._shares.pop(next(iter(self._shares)))


class FilteredRows(Protocol):
    """The rows a filtered vector search may return, as the database sees them, and the plan it followed."""

    plan: dict

    def ids(self, among: list | None, limit: int | None = None) -> list: ...

    def count_among(self, ids: list) -> int: ...


def _manifest(store: Any, key: str) -> dict | None:
    """The manifest of a saved index; ``None`` for a state saved in an older format."""
    data = store.get_bytes(key)
    if not data.startswith(b'{'):
        return None
    return json.loads(data)


def _has_hnswlib() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True

