"""Following writes to Delta tables by other programs: their table versions.

Each followed table has a *seen* version in the folder's state database (``_superduper_lake_seen``). A poll reads
the commits after it, one version at a time, from the table's log (``_delta_log/<version>.json``): the rows of the
files a commit added, compared with the rows of the files it removed, give the rows inserted or updated (a row
copied unchanged into a rewritten file is not a change) and the keys deleted (in a removed file, in no added one,
and no longer in the table). A commit that marks rows deleted with a deletion vector makes every row of its files a
change (a row found gone is a delete). The cost of a poll is one listing of the log when nothing changed, and
otherwise proportional to the files the new commits touched, never to the table.

A version's changes are computed as one batch (cut to the consumer's limit), and the seen version moves past it in
the transaction that stores the last of its results: a process that dies first leaves the version to be read again
by the next one. Commits made through superduper carry the writing process's token (``superduper.writer`` in the
commit's metadata) and are computed by their writer, so a poll skips this process's own commits, once no write of
this process to the table is in flight; another process's (or a dead one's) are read like any program's.

Every batch notes, per row, how many writes through this process had touched it; when it finishes, a row written
again since is left out (its newer write computes it), so an older result never replaces a newer one. Commits
another program makes while a version's batch is computing are read after it, in order.

Limits: a version whose log entry or removed files were deleted (``VACUUM`` with a retention shorter than the time
the table went unpolled, log cleanup) cannot be compared: its added rows are computed, and deletes in it are missed
(a warning says so). Plain Parquet and CSV files are not followed (only Delta tables record versions).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import sqlalchemy as sa

from superduper.backends.base import Batch, Change, Results
from superduper.backends.inline import InlineFeed, InlineWrites
from superduper.backends.lake.folder import TOKEN, WRITER
from superduper.base.keys import dump_key

log = logging.getLogger('superduper')

SEEN = '_superduper_lake_seen'
#: seconds after which a write through this process whose end was never seen no longer holds back polls
STUCK = 60.0


@dataclass
class VersionClaim:
    """A batch's claim: the version it computes (``None``: queued work or a write), and per key text the number of
    writes through this process that had touched the row when the batch was made."""

    table: str
    version: int | None
    touched: dict[str, int] = field(default_factory=dict)
    own_write: bool = False  # a write through this process: when it finishes, the write is no longer in flight


@dataclass
class _Found:
    """The changes of one version not handed out yet, and how many of its batches are out."""

    version: int
    rest: collections.deque
    out: int = 0


class VersionFeed(InlineFeed):
    """Writes through superduper and queued work as ``InlineFeed``; other programs' commits by their versions."""

    def __init__(self, backend: Any, failures: Any):
        """``backend``: a ``LakeDataBackend``."""
        super().__init__(backend, failures)
        self.lake = backend
        meta = sa.MetaData()
        self.seen = sa.Table(SEEN, meta, sa.Column('tbl', sa.String(255), primary_key=True),
                             sa.Column('version', sa.BigInteger, nullable=False))
        meta.create_all(backend.state.engine, checkfirst=True)
        self._found: dict[str, _Found] = {}  # table -> the version being computed
        #: table -> when each write through this process to it began, while in flight
        self._in_flight: dict[str, list[float]] = collections.defaultdict(list)
        #: table -> key text -> writes through this process, kept while a batch of the table is out (the batches
        #: compare these counts with those they were made with)
        self._touches: dict[str, collections.Counter] = {}
        self._out: collections.Counter = collections.Counter()  # table -> batches out
        self._state = threading.Lock()
        self._turn = 0

    # ---- which tables are followed -----------------------------------------------------------------------------
    def _followable(self, table: str) -> bool:
        """Whether the table records versions (a Delta table, not a plain file)."""
        found = self.lake.storage.find(table)
        return found is not None and found.kind == 'delta'

    def follow(self, table: str, key: Sequence[str]) -> None:
        """From the table's current version on (its rows as they are now are the backfill's)."""
        if self._followable(table) and self._seen_version(table) is None:
            self._store_first_seen(table, self.lake.storage.version(table))

    def unfollow(self, table: str) -> None:
        with self.lake.state.begin() as conn:
            conn.execute(self.seen.delete().where(self.seen.c.tbl == table))
        with self._state:
            self._found.pop(table, None)

    def _seen_version(self, table: str) -> int | None:
        with self.lake.state.engine.connect() as conn:
            return conn.execute(sa.select(self.seen.c.version).where(self.seen.c.tbl == table)).scalar()

    # ---- writes through superduper ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, conn: Any, table: str, key: Sequence[str]) -> Iterator[InlineWrites]:
        with self._state:
            self._in_flight[table].append(time.monotonic())
        handle = InlineWrites(table)
        try:
            yield handle
        except BaseException:
            self._write_done(table)
            raise

    def written(self, handle: InlineWrites) -> Batch | None:
        texts = [dump_key(k) for k in handle.keys]
        with self._state:
            touches = self._touches.setdefault(handle.table, collections.Counter())
            touches.update(texts)
        batch = super().written(handle)
        if batch is None:
            self._write_done(handle.table)
            return None
        batch.claim = self._claim(handle.table, batch.changes, own_write=True)
        return batch

    def _write_done(self, table: str) -> None:
        with self._state:
            if self._in_flight[table]:
                self._in_flight[table].pop(0)

    def _claim(self, table: str, changes: list[Change], version: int | None = None,
               own_write: bool = False) -> VersionClaim:
        """The claim of a batch going out now, with the counts of writes of its rows so far."""
        with self._state:  # counted out with the same lock the counts are read: they cannot be dropped between
            self._out[table] += 1
            return VersionClaim(table, version, self._counts(table, changes), own_write)

    def _touched(self, table: str, changes: list[Change]) -> dict[str, int]:
        with self._state:
            return self._counts(table, changes)

    def _counts(self, table: str, changes: list[Change]) -> dict[str, int]:
        """Per row, the writes through this process so far (the caller holds ``_state``)."""
        touches = self._touches.get(table, collections.Counter())
        return {c.text: touches[c.text] for c in changes}

    # ---- consuming ---------------------------------------------------------------------------------------------
    def claim(self, limit: int, listener: str | None = None) -> Batch | None:
        """Queued work first (backfills, retries), then the next version of a followed table."""
        batch = super().claim(limit, listener)
        if batch is not None:
            batch.claim = self._claim(batch.changes[0].table, batch.changes)
            return batch
        if listener is not None:
            return None
        return self._poll(limit)

    def _poll(self, limit: int) -> Batch | None:
        tables = sorted({t for t, _ in self.listeners() if self._followable(t)})
        self._turn += 1
        for table in tables[self._turn % len(tables):] + tables[:self._turn % len(tables)] if tables else []:
            batch = self._next_batch(table, limit)
            if batch is not None:
                return batch
        return None

    def _next_batch(self, table: str, limit: int) -> Batch | None:
        with self._state:
            found = self._found.get(table)
            if found is not None and not found.rest:
                return None  # the version's batches are out: the next version waits for them
        if found is None:
            found = self._read_next_version(table)
            if found is None:
                return None
        with self._state:
            keys = [found.rest.popleft() for _ in range(min(limit, len(found.rest)))]
            found.out += 1
        changes = [Change(table, k, None, dump_key(k)) for k in keys]
        return Batch(stamp=next(self._stamps), changes=changes, claim=self._claim(table, changes, found.version))

    def _read_next_version(self, table: str) -> _Found | None:
        """The changes of the first version after the seen one that others made (this process's own commits are
        passed over once none of its writes is in flight); ``None`` if there is none."""
        seen = self._seen_version(table)
        if seen is None:  # a plain file when its listener was applied, made a Delta table since: version 0 holds
            seen = 0      # the rows the backfill read, so every later version is a change
            self._store_first_seen(table, seen)
        storage = self.lake.storage
        while True:
            version = seen + 1
            commit = storage.commit(table, version)
            if commit is None:
                return None
            if commit.info.get(WRITER) == TOKEN:
                if self._writing_now(table):
                    return None  # its writer is still computing it
                self._store_seen(table, version)
                seen = version
                continue
            keys = self._changed_keys(table, commit)
            if not keys:
                self._store_seen(table, version)
                seen = version
                continue
            found = _Found(version, collections.deque(keys))
            with self._state:
                self._found[table] = found
            return found

    def _writing_now(self, table: str) -> bool:
        """Whether a write through this process to ``table`` is in flight (one stuck longer than ``STUCK`` seconds,
        whose end was never seen, e.g. its state commit failed after its Delta commit, no longer counts)."""
        with self._state:
            return any(time.monotonic() - start < STUCK for start in self._in_flight[table])

    def _store_first_seen(self, table: str, version: int) -> None:
        with self.lake.state.begin() as conn:
            if conn.execute(sa.select(self.seen.c.version).where(self.seen.c.tbl == table)).first() is None:
                conn.execute(self.seen.insert(), {'tbl': table, 'version': version})

    def _changed_keys(self, table: str, commit: Any) -> list:
        key = self.lake.primary_key(table)
        if len(key) != 1:
            log.warning('table %r has no single-column primary key: changes by other programs are not followed',
                        table)
            return []
        return self.lake.storage.changed_keys(table, commit, key[0],
                                              lambda ks: {r[0] for r in self.lake.rows_by_key(table, key, key[0], ks)})

    def _store_seen(self, table: str, version: int, conn: Any = None) -> None:
        if conn is None:
            with self.lake.state.begin() as own:
                self._store_seen(table, version, own)
            return
        c = self.seen.c
        conn.execute(self.seen.update().where(c.tbl == table, c.version < version).values(version=version))

    # ---- results ----------------------------------------------------------------------------------------------
    def _current(self, conn: Any, batch: Batch, results: list[Results]) -> list[Results]:
        """Leave out the rows written through this process since the batch was made: their writes compute them."""
        claim = batch.claim
        if not isinstance(claim, VersionClaim) or not claim.touched:
            return results
        now = self._touched(claim.table, [c for c in batch.changes if c.table == claim.table])
        newer = {t for t, n in now.items() if n > claim.touched.get(t, 0)}
        if not newer:
            return results
        for res in results:
            res.stored = [(c, row) for c, row in res.stored if c.text not in newer]
            res.gone = [c for c in res.gone if c.text not in newer]
            res.failed = [(c, e) for c, e in res.failed if c.text not in newer]
        return results

    def _seen(self, conn: Any, batch: Batch) -> None:
        """In the finishing transaction: the version is seen once its last batch is stored."""
        claim = batch.claim
        if not isinstance(claim, VersionClaim) or claim.version is None:
            return
        with self._state:
            found = self._found.get(claim.table)
            last = found is not None and found.version == claim.version and found.out == 1 and not found.rest
        if last:
            self._store_seen(claim.table, claim.version, conn)

    def finish(self, batch: Batch, results: list[Results], followed: set[str],
               handed: Sequence[tuple[str, str]] = ()) -> Any:
        try:
            return super().finish(batch, results, followed, handed)
        finally:
            self._settled(batch, done=True)

    def release(self, batch: Batch) -> None:
        claim = batch.claim
        if isinstance(claim, VersionClaim) and claim.version is not None:
            self._settled(batch, done=False)
            return
        self._settled(batch, done=False)
        super().release(batch)

    def _settled(self, batch: Batch, done: bool) -> None:
        claim = batch.claim
        if not isinstance(claim, VersionClaim):
            return
        with self._state:
            self._out[claim.table] -= 1
            if not self._out[claim.table]:  # no batch left to compare with: the counts can go
                del self._out[claim.table]
                self._touches.pop(claim.table, None)
        if claim.own_write:
            self._write_done(claim.table)
            return
        if claim.version is None:
            return
        with self._state:
            found = self._found.get(claim.table)
            if found is None or found.version != claim.version:
                return
            found.out -= 1
            if not done:  # given back: its keys are handed out again first
                found.rest.extendleft(reversed([c.key for c in batch.changes]))
            elif found.out == 0 and not found.rest:
                del self._found[claim.table]

    def pending(self, table: str) -> tuple[int | None, float | None]:
        queued, _ = super().pending(table)
        with self._state:
            found = self._found.get(table)
            return queued + (len(found.rest) if found else 0), None
