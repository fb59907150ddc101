"""Loaded keyword indexes and keyword search, exact under filters.

A native index (``KeywordIndex.native``) is the database's: built on apply, searched with the filter in the same
statement, dropped on remove. An in-process index holds the texts of its listener's outputs table in a BM25 engine
(``superduper.vector_search.bm25``) and follows that table like a vector index does: before a search, at most once
per poll interval (at once after a write through this process), it reads the outputs numbered after the last it has
seen (``OutputLog``), or the whole table when deletions since were forgotten. It is rebuilt from the outputs table
when a process opens it (texts are cheap to read; nothing is saved).
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from superduper.backends.base import OUTPUT_SEQ
from superduper.base.exceptions import NotFound, QueryError
from superduper.base.query import And, Compare, Condition, key_in
from superduper.runtime.tables import encode_condition
from superduper.vector_search.bm25 import BM25Index

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.components.keyword_index import KeywordIndex

SOURCE = '_source'
#: matches checked against a filter at a time, per row wanted
FILTER_CHUNK = 4


class LoadedKeywordIndex:
    def __init__(self, component: 'KeywordIndex', searcher: Any):
        self.component = component
        self.searcher = searcher  # a KeywordSearcher (native) or a BM25Index
        self.seen: int | None = None  # the outputs table's write number the engine holds (in process)
        self.low: int | None = None
        self.checked = -math.inf
        self.stale = True
        self.lock = threading.Lock()  # one look at the outputs at a time

    @property
    def outputs(self) -> str:
        return self.component.indexing_listener.outputs


class KeywordIndexes:
    def __init__(self, db: 'Runtime'):
        self.db = db
        self._loaded: dict[str, LoadedKeywordIndex] = {}
        self._generation = db.components_generation()

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def _native(self, index: 'KeywordIndex') -> Any:
        pk = self.db.table_info(index.source).primary_key[0]
        return self.db.databackend.keyword_searcher(index.index_name, index.source, index.key, pk, index.language)

    def build(self, index: 'KeywordIndex') -> None:
        if index.native:
            self._native(index).build()
        self._open(index)

    def drop(self, index: 'KeywordIndex') -> None:
        loaded = self._loaded.get(index.identifier)
        if loaded is not None and loaded.component.uuid == index.uuid:
            self._loaded.pop(index.identifier)
            self._detach(loaded)
        if index.native:
            self._native(index).drop()

    def _open(self, index: 'KeywordIndex') -> LoadedKeywordIndex:
        previous = self._loaded.get(index.identifier)
        if previous is not None:
            self._detach(previous)
        if index.native:
            loaded = LoadedKeywordIndex(index, self._native(index))
        else:
            loaded = LoadedKeywordIndex(index, BM25Index(index.language))

            def written(ids: list, deleted: bool) -> None:
                loaded.stale = True

            written.keyword_uuid = index.uuid  # type: ignore[attr-defined]
            self.db.listening.hooks.setdefault(loaded.outputs, []).append(written)
        self._loaded[index.identifier] = loaded
        return loaded

    def _detach(self, loaded: LoadedKeywordIndex) -> None:
        if loaded.component.native:
            return
        hooks = self.db.listening.hooks.get(loaded.outputs, [])
        self.db.listening.hooks[loaded.outputs] = [
            h for h in hooks if getattr(h, 'keyword_uuid', None) != loaded.component.uuid]

    def get(self, identifier: str) -> LoadedKeywordIndex:
        """The index named ``identifier``, current with the database as of at most one poll interval ago."""
        generation = self.db.components_generation()
        if generation != self._generation:  # another process removed or replaced some: look again
            self._generation = generation
            for name, loaded in list(self._loaded.items()):
                record = self.db.metadata.get('KeywordIndex', name)
                if record is None or record['uuid'] != loaded.component.uuid:
                    self._detach(self._loaded.pop(name))
        loaded = self._loaded.get(identifier)
        if loaded is None:
            existing = self.db.metadata.identifiers('KeywordIndex')
            if identifier not in existing:
                raise NotFound(f'no keyword index named {identifier!r}; existing: {", ".join(existing) or "(none)"}')
            loaded = self._open(self.db.load('KeywordIndex', identifier))
        if not loaded.component.native:
            self.follow(loaded)
        return loaded

    # ---- following the outputs table (in process) --------------------------------------------------------------
    def follow(self, loaded: LoadedKeywordIndex) -> None:
        now = time.monotonic()
        if not loaded.stale and now - loaded.checked < self.db.cfg.poll_interval:
            return
        with loaded.lock:
            loaded.stale = False  # before looking: a write landing meanwhile asks for another look
            loaded.checked = now
            try:
                self._look(loaded)
            except BaseException:
                loaded.stale = True  # the next search looks again
                raise

    def _look(self, loaded: LoadedKeywordIndex) -> None:
        log, outputs = self.db.databackend.output_log(), loaded.outputs
        if not self.db.databackend.has_table(outputs):
            return
        head = log.head(outputs)
        if head is None:
            return
        top, floor = head
        since = loaded.seen
        start = since if log.ordered or loaded.low is None else loaded.low
        if since == top and start == since:
            return
        deleted = None if start is None or start < floor else log.deleted(outputs, start, top)
        if deleted is None:  # never read, or deletions since were forgotten: the whole table
            rows = self.db.execute(self.db[outputs].select(SOURCE, outputs))
            loaded.searcher.replace((r[SOURCE], r[outputs]) for r in rows)
        else:
            latest: dict[Any, tuple[int, Any]] = {}
            query = self.db[outputs].select(SOURCE, outputs, OUTPUT_SEQ).filter(
                Compare(OUTPUT_SEQ, '>', start), Compare(OUTPUT_SEQ, '<=', top))
            for row in self.db.execute(query):
                latest[row[SOURCE]] = (row[OUTPUT_SEQ], row[outputs])
            gone = set()
            for source, seq in deleted:
                if source not in latest or latest[source][0] < seq:
                    latest.pop(source, None)
                    gone.add(source)
            loaded.searcher.remove(gone)
            loaded.searcher.upsert((s, text) for s, (_, text) in latest.items())
        loaded.low, loaded.seen = since, top

    # ---- search -------------------------------------------------------------------------------------------------
    def search(self, identifier: str, table: str, text: str, n: int, where: Condition | None,
               allowed: Callable[[list], set]) -> list[tuple[Any, float]]:
        """``(primary key, score)`` of the ``n`` best rows of ``table`` for ``text`` among those ``where`` selects,
        best first; ``allowed(keys)`` says which of some keys ``where`` selects (in-process engine)."""
        loaded = self.get(identifier)
        index = loaded.component
        if index.source != table:
            raise QueryError(f'keyword index {identifier!r} indexes table {index.source!r}, not {table!r}')
        if index.native:  # the index covers the whole table: the index's own filter applies too
            if index.select.where is not None:
                own = encode_condition(index.select.where, self.db.table_info(table))
                where = own if where is None else And((where, own))
            return loaded.searcher.search(text, n, where)
        return loaded.searcher.search(text, n, allowed if where is not None else None, max(FILTER_CHUNK * n, 100))


def passing(db: 'Runtime', table: str, primary_key: str, where: Condition) -> Callable[[list], set]:
    """Which of some keys of ``table`` the (encoded) filter ``where`` selects."""
    def allowed(keys: list) -> set:
        cond = And((where, key_in((primary_key,), keys)))
        return {row[0] for batch in db.databackend.select(table, [primary_key], cond) for row in batch}

    return allowed
