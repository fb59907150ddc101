"""Following writes made through superduper, in the process that makes them: the change feed of databases that
cannot record changes themselves (DuckDB, an in-memory SQLite, any other SQLAlchemy database), and the base of
MongoDB's (``superduper.backends.mongodb.change_stream``).

Nothing is kept in the database: a write's changes are its keys, computed by the writer once it commits; a
backfill or retry is a queue in this process that yields keys as the consumer asks for them (read from the table in
batches, never all at once). Writes by other clients are not seen.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from superduper.backends.base import Batch, Change, Finished, Results
from superduper.backends.feed import write_results
from superduper.base.keys import dump_key
from superduper.base.query import Condition


@dataclass
class InlineWrites:
    """What a write through superduper tells the feed: the keys of the rows it wrote (inserted, updated, deleted)."""

    table: str
    keys: list = field(default_factory=list)
    needs_keys = True  # the writer must say which rows it wrote (nothing records them)

    def add(self, keys: Sequence[Any]) -> None:
        self.keys.extend(keys)


@dataclass
class _Queued:
    table: str
    listener: str
    keys: Iterator[Any]
    left: int
    busy: bool = False  # a consumer is reading its next keys (it stays queued, so it still counts as pending)


class InlineFeed:
    durable = False

    def __init__(self, backend: Any, failures: Any):
        self.backend = backend
        self.failures = MetadataFailures(failures)
        self._queue: deque[_Queued] = deque()
        self._lock = threading.Lock()
        self._stamps = itertools.count(1)
        #: batches of queued work taken by a consumer and not yet finished: id(batch) -> (listener, rows); they
        #: count as pending, so a backfill waits for another consumer's batch instead of calling itself done
        self._taken: dict[int, tuple[str, int]] = {}
        #: the (table, listener uuid) pairs followed now, given by the runtime (``attach``)
        self.listeners: Callable[[], list[tuple[str, str]]] = lambda: []

    def attach(self, listeners: Callable[[], list[tuple[str, str]]]) -> None:
        self.listeners = listeners

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.backend!r})'

    def follow(self, table: str, key: Sequence[str]) -> None:
        pass

    def unfollow(self, table: str) -> None:
        pass

    # ---- writes made through superduper ---------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, conn: Any, table: str, key: Sequence[str]) -> Iterator[InlineWrites]:
        yield InlineWrites(table)

    def written(self, handle: InlineWrites) -> Batch | None:
        return self.batch(handle.table, None, handle.keys)

    def batch(self, table: str, listener: str | None, keys: Sequence[Any]) -> Batch | None:
        """An in-memory batch of these keys (each once)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return None
        return Batch(stamp=next(self._stamps), changes=[Change(table, k, listener, dump_key(k)) for k in keys])

    # ---- queued work (backfills, retries) -------------------------------------------------------------------
    def enqueue(self, table: str, listener: str, where: Condition | None = None, keys: Sequence[Any] | None = None,
                refs: Sequence[Any] | None = None) -> int:
        keys = refs if refs is not None else keys
        if keys is not None:
            keys = list(keys)
            entry = _Queued(table, listener, iter(keys), len(keys))
        else:
            entry = _Queued(table, listener, self._keys_of(table, where), self.backend.count(table, where))
        with self._lock:
            self._queue.append(entry)
        return entry.left

    def _keys_of(self, table: str, where: Condition | None) -> Iterator[Any]:
        key = self.backend.primary_key(table)
        for batch in self.backend.select(table, key, where, batch_size=2000):
            for row in batch:
                yield row[0] if len(key) == 1 else tuple(row)

    def claim(self, limit: int, listener: str | None = None) -> Batch | None:
        with self._lock:  # the entry is marked busy: its keys are read from the database with no lock held
            entry = next((e for e in self._queue if not e.busy and (listener is None or e.listener == listener)),
                         None)
            if entry is None:
                return None
            entry.busy = True
        keys: list = []
        try:
            keys = list(itertools.islice(entry.keys, limit))
        finally:
            with self._lock:
                entry.busy = False
                entry.left = max(0, entry.left - len(keys))
                if len(keys) < limit:
                    self._queue.remove(entry)
                batch = self.batch(entry.table, entry.listener, keys) if keys else None
                if batch is not None:
                    self._taken[id(batch)] = (entry.listener, len(batch.changes))
        return batch if batch is not None else self.claim(limit, listener)

    def _settle(self, batch: Batch) -> None:
        """The batch is finished or given back: its rows no longer count as taken."""
        with self._lock:
            self._taken.pop(id(batch), None)

    def hand_off(self, batch: Batch) -> None:
        pass

    def adopt(self, batch: Batch) -> None:
        pass

    def release(self, batch: Batch) -> None:
        """Queue the batch's changes again (at the front)."""
        self._settle(batch)
        with self._lock:
            for (table, listener), changes in batch.groups().items():
                self._queue.appendleft(_Queued(table, listener, iter([c.key for c in changes]), len(changes)))

    # ---- results -----------------------------------------------------------------------------------------------
    def finish(self, batch: Batch, results: list[Results], followed: set[str],
               handed: Sequence[tuple[str, str]] = ()) -> Finished:
        """``handed`` needs nothing here: where listeners are asynchronous (MongoDB with change streams), the
        workers see the writes in their own change streams."""
        try:
            return self._finish(batch, results, followed)
        finally:
            self._settle(batch)

    def _finish(self, batch: Batch, results: list[Results], followed: set[str]) -> Finished:
        finished = Finished(stored={}, gone={})
        chained: dict[str, list] = {}
        log = self.backend.output_log()
        for res in results:
            log.prepare(res.outputs_table)
        with self._writes() as conn:
            results = self._current(conn, batch, results)
            for res in results:
                removed = res.gone + [c for c, _ in res.failed]
                touched = write_results(log, conn, res, res.stored, removed)
                finished.stored[res.listener] = [c for c, _ in res.stored]
                finished.gone[res.listener] = list(res.gone)
                if res.outputs_table in followed:
                    chained.setdefault(res.outputs_table, []).extend(touched)
            self._seen(conn, batch)
        for res in results:
            if res.failed:
                self.failures.log.record(res.listener, [(c.key, error) for c, error in res.failed])
            done = [c.key for c, _ in res.stored] + [c.key for c in res.gone]
            if done:
                self.failures.log.clear(res.listener, done)
        changes = [Change(table, k, None, dump_key(k)) for table, keys in chained.items() for k in dict.fromkeys(keys)]
        finished.chained = Batch(stamp=next(self._stamps), changes=changes) if changes else None
        return finished

    def _current(self, conn: Any, batch: Batch, results: list[Results]) -> list[Results]:
        """The results to store, in the finishing transaction: all of them here (a feed that can tell may leave
        out rows written again since the batch was made)."""
        return results

    def _seen(self, conn: Any, batch: Batch) -> None:
        """Record, in the finishing transaction, what the batch's results cover (nothing to record here)."""

    @contextlib.contextmanager
    def _writes(self) -> Iterator[Any]:
        with self.backend.begin() as conn:
            yield conn

    # ---- status ------------------------------------------------------------------------------------------------
    def problem_with(self, table: str) -> str | None:
        """Why changes to ``table`` are not followed now, if they are not."""
        return None

    def pending(self, table: str) -> tuple[int | None, float | None]:
        """Only what this process has queued (writes are followed as they are made)."""
        with self._lock:
            return sum(e.left for e in self._queue if e.table == table), None

    def pending_for(self, listener: str) -> int | None:
        """Rows queued for the listener, and rows of it a consumer here has taken and not finished."""
        with self._lock:
            return (sum(e.left for e in self._queue if e.listener == listener)
                    + sum(n for who, n in self._taken.values() if who == listener))

    def failure_log(self) -> 'MetadataFailures':
        return self.failures

    def close(self) -> None:
        pass


class MetadataFailures:
    """The failure log of the metadata store, with the interface of ``superduper.backends.sql.changes``'s."""

    def __init__(self, log: Any):
        self.log = log

    def count(self, listener: str) -> int:
        return self.log.count(listener)

    def list(self, listener: str, table: str) -> list[dict]:
        return self.log.list(listener)

    def texts(self, listener: str) -> list:
        return [f['source'] for f in self.log.list(listener)]

    def take_due(self, listener: str, max_attempts: int, delay: float) -> list:
        return self.log.due(listener, max_attempts, delay)

    def clear(self, listener: str) -> None:
        self.log.clear(listener)

    def invalidate(self) -> None:
        self.log.invalidate()
