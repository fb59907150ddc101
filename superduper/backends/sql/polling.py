"""Following writes by other clients on databases without triggers (DuckDB, ClickHouse through chDB): polling.

Each followed table has a *seen* table, ``_superduper_seen_<digest of the table's name>``: per primary key, a hash
of the whole row (the database's own multi-column hash: DuckDB's ``hash``, ClickHouse's ``cityHash64``) as it was
when listeners' outputs were last stored for it. A poll is one query run by the database: the table's keys and row
hashes, fully outer-joined with the seen table, keeping the rows inserted (no seen row), updated (another hash) and
deleted (no row), at most ``limit`` of them. Its cost is one scan of the table and of its seen table (measured in
``benchmarks/polling.py``); the background consumer polls every ``poll_interval`` seconds while idle, and at once
again while polls find work, so a write by another client is computed within about one interval.

Every batch (a poll's, a write through superduper's, a backfill's) carries the hash of each of its rows when it was
made (a write's own: read in its transaction). When it finishes, in one transaction, the rows' hashes are read
again: a row written since is left out (its results are not stored, and its seen hash stays as it was), because
whoever wrote it computes it (a write through superduper) or the next poll finds it (any other client). The other
rows' results are stored and, for batches of every listener of the table (polls, writes), their hashes become the
seen ones. So:

* a write through superduper that commits but dies before its outputs are stored is found by the next poll, in
  this process or the next one to open the database (nothing is marked seen until its outputs are stored);
* a result computed from a row that changed meanwhile never overwrites the newer one's, and is never marked seen;
* writes made while no process had the database open are found by the first poll after it opens.

Keys a write through this process is computing are skipped by polls until it finishes (its batch, not the
poller, computes them). One interleaving is not seen: a row changed and changed back to exactly the values a batch
hashed, while that batch read the row in between (its results then describe the intermediate values). Databases
with triggers record every write instead and have no such window.

A table named in the ``poll_by`` setting has a column every writer sets to a larger value on each insert and
update (an ``updated_at`` timestamp, a version number). Its polls compare only the rows whose value is at least a
*mark* (and those with none) with the seen table, and find deletes by the keys alone (seen keys with no row), so an
idle poll hashes only the rows set recently. A mark is the largest value a poll saw ``poll_lookback`` seconds ago or
more, recorded only by polls that found everything past their own mark (not cut short by their limit), and forgotten
when a batch of the table's is given back undone: every row not yet computed then has a value at least the mark,
unless a transaction ran longer than ``poll_lookback`` between setting the column and committing. Until a process
has such a mark (its first ``poll_lookback`` seconds), its polls hash every row.

A table followed for the first time has its seen table filled from its rows as they are (the listener's backfill
computes those), and a table's seen table is dropped when its last listener goes. Tables superduper alone writes
(listeners' outputs) are followed through the writes themselves and never polled.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import decimal
import hashlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import sqlalchemy as sa

from superduper.backends.base import Batch, Change, Results
from superduper.backends.feed import chunks
from superduper.backends.inline import InlineFeed, InlineWrites
from superduper.base.exceptions import ConfigError
from superduper.base.keys import dump_key

if TYPE_CHECKING:
    from superduper.backends.sql.protocol import SQLBackend

SEEN_PREFIX = '_superduper_seen_'
OUTPUTS_PREFIX = '_outputs__'


def seen_table_name(table: str) -> str:
    """The seen table of ``table`` (a digest: any table name fits the database's limit on names)."""
    return SEEN_PREFIX + hashlib.sha1(table.encode()).hexdigest()[:20]


@dataclass
class Hashes:
    """A batch's claim: the hash of each of its rows (by key text) when the batch was made, ``None`` for a row that
    did not exist; ``every_listener``: the batch is for every listener of the table (a poll, a write), so its
    hashes become the seen ones when it finishes."""

    table: str
    hashes: dict[str, str | None]
    every_listener: bool
    writer: bool = False  # a write through this process: its keys are skipped by polls until it finishes
    held: list[str] = field(default_factory=list)  # the keys skipped by polls meanwhile (all of the write's)


@dataclass
class PolledWrites(InlineWrites):
    hashes: dict[str, str | None] = field(default_factory=dict)


class PollingFeed(InlineFeed):
    """Writes through superduper and queued work as ``InlineFeed``; writes by other clients by polling."""

    clock = staticmethod(time.monotonic)  # when polls happen, for the marks of ``poll_by`` tables

    def __init__(self, backend: 'SQLBackend', failures: Any, poll_by: dict[str, str] | None = None,
                 lookback: float = 300.0):
        super().__init__(backend, failures)
        self._poll_by = dict(poll_by or {})  # table -> the column its writers raise on every write
        self._lookback = lookback
        self._marks: dict[str, collections.deque] = {}  # table -> (time, largest value) of its complete polls
        self._marks_lock = threading.Lock()  # the background consumer and ``work()`` may poll at once
        self._forgotten = collections.Counter()  # table -> times its marks were forgotten
        self._computing: dict[str, collections.Counter] = {}  # table -> key texts a write here is computing
        self._computing_lock = threading.Lock()
        self._turn = itertools.count()  # which followed table a poll looks at first (each in turn)
        self._ready: set[str] = set()  # tables whose seen table exists
        self._making = threading.Lock()  # one thread makes a seen table (taken outside any transaction)
        self._sources: dict[str, sa.Table] = {}

    # ---- which tables are followed ---------------------------------------------------------------------------
    def follow(self, table: str, key: Sequence[str]) -> None:
        self._sources.pop(table, None)  # columns may have been added since
        if self._ensure_seen(table) is not None:
            self._changed_column(table)  # a poll_by naming no such column is refused here, not at each poll

    def unfollow(self, table: str) -> None:
        self._ready.discard(table)
        name = seen_table_name(table)
        if self.backend.has_table(name):
            self.backend.drop_table(name)

    def _polled(self, table: str) -> bool:
        return not table.startswith(OUTPUTS_PREFIX)

    def _ensure_seen(self, table: str) -> sa.Table | None:
        """The seen table of ``table``, made and filled from its rows as they are now if there is none. Called
        outside transactions: it may reflect tables (on DuckDB a transaction cannot start inside another)."""
        if not self._polled(table):
            return None
        name = seen_table_name(table)
        if table not in self._ready:
            with self._making:
                if table not in self._ready and not self.backend.has_table(name):
                    self._make_seen(table, name)
                self._ready.add(table)
        self._source(table)
        return self.backend.table(name)

    def _make_seen(self, table: str, name: str) -> None:
        source = self._source(table)
        key = self._key_columns(source)
        columns = [sa.Column(f'k{i}', c.type, primary_key=True) for i, c in enumerate(key)]
        seen = sa.Table(name, sa.MetaData(), *columns, sa.Column('h', sa.String(40), nullable=False))
        with self.backend.begin() as conn:
            seen.create(conn)
            conn.execute(sa.insert(seen).from_select([c.name for c in columns] + ['h'],
                                                     sa.select(*key, self._row_hash(source))))

    def _source(self, table: str) -> sa.Table:
        """The followed table's columns, looked up once (``current_table``: a reflection here must not replace the
        types superduper declared in the backend's cache, such as a native vector column's)."""
        source = self._sources.get(table)
        if source is None:
            source = self._sources[table] = self.backend.current_table(table)
        return source

    def _changed_column(self, table: str) -> sa.Column | None:
        """The column ``poll_by`` names for ``table``, if any."""
        name = self._poll_by.get(table)
        if name is None:
            return None
        source = self._source(table)
        if name not in source.c:
            raise ConfigError(f'poll_by names column {name!r} of table {table!r}, which has no such column; its '
                              f'columns: {", ".join(source.c.keys())}')
        column = source.c[name]
        if _python_type(column) not in (int, float, str, datetime.datetime, datetime.date, decimal.Decimal):
            raise ConfigError(f'poll_by names column {name!r} of table {table!r}, of type {column.type}: a polled '
                              'column holds numbers, times or text that each write makes larger')
        return column

    def _key_columns(self, source: sa.Table) -> list[sa.Column]:
        return list(source.primary_key.columns)

    @staticmethod
    def _key_of(row: Sequence[Any]) -> Any:
        """A key as the runtime names rows: the value, or a tuple of a composite key's values."""
        return row[0] if len(row) == 1 else tuple(row)

    def _row_hash(self, source: sa.Table) -> Any:
        return self.backend.row_hash(source).label('h')

    # ---- writes made through superduper ---------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, conn: Any, table: str, key: Sequence[str]) -> Iterator[PolledWrites]:
        handle = PolledWrites(table)
        yield handle
        # in the writer's transaction: the rows as it wrote them (a table not looked at yet in this process cannot
        # be reflected inside a transaction: its rows are then computed unverified and polled again)
        if table in self._sources and handle.keys:
            handle.hashes = self._hashes(conn, table, handle.keys)

    def written(self, handle: PolledWrites) -> Batch | None:
        batch = super().written(handle)
        if batch is not None and handle.hashes and self._ensure_seen(handle.table) is not None:
            batch.claim = Hashes(handle.table, handle.hashes, every_listener=True, writer=True)
            self._hold(batch.claim)
        return batch

    def _hold(self, claim: Hashes) -> None:
        claim.held = list(claim.hashes)  # ``hashes`` loses the rows written again meanwhile; all are let go
        with self._computing_lock:
            self._computing.setdefault(claim.table, collections.Counter()).update(claim.held)

    def _let_go(self, claim: Any) -> None:
        if not (isinstance(claim, Hashes) and claim.writer):
            return
        with self._computing_lock:
            held = self._computing.get(claim.table)
            if held is not None:
                held.subtract(claim.held)
                claim.held = []
                for text in [t for t, n in held.items() if n <= 0]:
                    del held[text]

    def _skipped(self, table: str) -> set[str]:
        with self._computing_lock:
            return set(self._computing.get(table, ()))

    # ---- consuming ------------------------------------------------------------------------------------------
    def claim(self, limit: int, listener: str | None = None) -> Batch | None:
        """Queued work first (backfills, retries), then what a poll finds."""
        batch = super().claim(limit, listener)
        if batch is not None:
            table = batch.changes[0].table
            if self._ensure_seen(table) is not None:
                with self.backend.begin() as conn:
                    batch.claim = Hashes(table, self._hashes(conn, table, [c.key for c in batch.changes]),
                                         every_listener=False)
            return batch
        if listener is not None:
            return None
        return self._poll(limit)

    def _poll(self, limit: int) -> Batch | None:
        tables = sorted({t for t, _ in self.listeners() if self._polled(t)})
        if not tables:
            return None
        start = next(self._turn) % len(tables)
        for table in tables[start:] + tables[:start]:
            skipped = self._skipped(table)
            found = self._polled_differences(table, limit + len(skipped))
            changes, hashes = [], {}
            for key, h in found:
                text = dump_key(key)
                if text not in skipped and len(changes) < limit:
                    changes.append(Change(table, key, None, text))
                    hashes[text] = h
            if changes:
                return Batch(stamp=next(self._stamps), changes=changes,
                             claim=Hashes(table, hashes, every_listener=True))
        return None

    def _polled_differences(self, table: str, limit: int) -> list[tuple[Any, str | None]]:
        """What one poll of ``table`` finds: every difference, or with a ``poll_by`` column, the differences among
        rows set since the mark and the deletes; a poll that found all of them records a mark."""
        column = self._changed_column(table)
        if column is None:
            return self._differences(table, limit)
        polled_at = self.clock()
        forgotten = self._forgotten[table]
        with self.backend.begin() as conn:
            largest = conn.execute(sa.select(sa.func.max(column))).scalar()  # before the rows: a mark never passes one
        found = self._differences(table, limit, since=self._mark(table, polled_at))
        with self._marks_lock:  # not when the marks were forgotten meanwhile: this poll may have used one
            if len(found) < limit and largest is not None and self._forgotten[table] == forgotten:
                self._marks.setdefault(table, collections.deque()).append((polled_at, largest))
        return found

    def _mark(self, table: str, now: float) -> Any:
        """The largest value a complete poll saw ``lookback`` seconds ago or more (older marks are dropped), or
        ``None``: none yet."""
        with self._marks_lock:
            marks = self._marks.get(table)
            while marks and len(marks) > 1 and marks[1][0] <= now - self._lookback:
                marks.popleft()
            if marks and marks[0][0] <= now - self._lookback:
                return marks[0][1]
            return None

    def _forget_marks(self, claim: Any) -> None:
        """A batch given back undone: its rows may lie below the marks, so polls hash every row until new ones."""
        if isinstance(claim, Hashes):
            with self._marks_lock:
                self._marks.pop(claim.table, None)
                self._forgotten[claim.table] += 1

    def _parts(self, table: str) -> tuple[Any, Any, list[sa.Column], list[str]]:
        """For the poll queries: the seen table as ``was``, a select of the followed table's keys and row hashes
        (``k0``, ... and ``h``), its key columns, and the key names ``k0``, ..."""
        was = self._ensure_seen(table).alias('was')
        source = self._source(table)
        key = self._key_columns(source)
        names = [f'k{i}' for i in range(len(key))]
        return was, sa.select(*[c.label(n) for c, n in zip(key, names)], self._row_hash(source)), key, names

    @staticmethod
    def _same_key(one: Any, other: Any, names: list[str]) -> Any:
        return sa.and_(*[one.c[n] == other.c[n] for n in names])

    def _difference_query(self, table: str) -> Any:
        """The rows of ``table`` inserted, updated or deleted since they were seen: (hash now or None, *key)."""
        was, rows, _, names = self._parts(table)
        now = rows.subquery('now')
        deleted = now.c.k0.is_(None)  # a key column is never NULL
        return (sa.select(now.c.h, *[sa.case((deleted, was.c[n]), else_=now.c[n]).label(n) for n in names])
                .select_from(now.outerjoin(was, self._same_key(now, was, names), full=True))
                .where(sa.or_(was.c.k0.is_(None), deleted, now.c.h != was.c.h)))

    def _differences(self, table: str, limit: int, since: Any = None) -> list[tuple[Any, str | None]]:
        """(key, hash now or None) of at most ``limit`` rows inserted, updated or deleted since they were seen;
        ``since``: only among the rows whose ``poll_by`` column is at least this (or NULL), and the deleted."""
        if since is not None:
            return self._differences_since(table, limit, since)
        query = self._difference_query(table).limit(limit)  # before the transaction: it may make the seen table
        with self.backend.begin() as conn:
            return [(self._key_of(row[1:]), row[0]) for row in conn.execute(query)]

    def _differences_since(self, table: str, limit: int, since: Any) -> list[tuple[Any, str | None]]:
        """The rows set since ``since`` that differ from the seen ones, then the deleted ones, looked for (seen keys
        anti-joined with the table's, the costly part) only when the counts show some: seen rows, less rows, plus the
        new rows among those set since. Counted in this order (rows, rows set since, seen rows), a write or a stored
        batch between two counts can only show deletes that are not there, or hide one until the next poll."""
        changed_since = self._changed_since_query(table, since).limit(limit)  # before the transaction, as above
        deleted = self._deleted_query(table)
        count_rows = sa.select(sa.func.count()).select_from(self._source(table))
        count_seen = sa.select(sa.func.count()).select_from(self._ensure_seen(table))
        with self.backend.begin() as conn:
            rows = conn.execute(count_rows).scalar_one()
            changed = list(conn.execute(changed_since))
            found = [(self._key_of(row[2:]), row[0]) for row in changed]
            if len(found) < limit and conn.execute(count_seen).scalar_one() - rows + sum(r[1] for r in changed) != 0:
                found += [(self._key_of(row), None) for row in conn.execute(deleted.limit(limit - len(found)))]
        return found

    def _changed_since_query(self, table: str, since: Any) -> Any:
        """The rows set since ``since`` that are new or differ from the seen ones: (hash now, 1 if new, *key)."""
        was, rows, _, names = self._parts(table)
        column = self._changed_column(table)
        now = rows.where(sa.or_(column >= since, column.is_(None))).subquery('now')
        new = sa.case((was.c.k0.is_(None), 1), else_=0).label('new')
        return (sa.select(now.c.h, new, *[now.c[n] for n in names])
                .select_from(now.outerjoin(was, self._same_key(now, was, names)))
                .where(sa.or_(was.c.k0.is_(None), now.c.h != was.c.h)))

    def _deleted_query(self, table: str) -> Any:
        """The seen keys with no row any more."""
        was, _, key, names = self._parts(table)
        present = sa.select(*[c.label(n) for c, n in zip(key, names)]).subquery('present')
        return (sa.select(*[was.c[n] for n in names])
                .select_from(was.outerjoin(present, self._same_key(present, was, names)))
                .where(present.c.k0.is_(None)))

    def _hashes(self, conn: Any, table: str, keys: Sequence[Any]) -> dict[str, str | None]:
        """The row hash of each key now (``None``: no such row), by key text."""
        source = self._source(table)
        key = self._key_columns(source)
        column = key[0] if len(key) == 1 else sa.tuple_(*key)
        found: dict[str, str | None] = {dump_key(k): None for k in keys}
        for part in chunks(list(dict.fromkeys(keys))):
            for row in conn.execute(sa.select(self._row_hash(source), *key).where(column.in_(part))):
                found[dump_key(self._key_of(row[1:]))] = row[0]
        return found

    # ---- results --------------------------------------------------------------------------------------------
    def _current(self, conn: Any, batch: Batch, results: list[Results]) -> list[Results]:
        """Leave out the rows written since the batch hashed them (their writer, or the next poll, computes them)."""
        claim = batch.claim
        if not isinstance(claim, Hashes):
            return results
        now = self._hashes(conn, claim.table, [c.key for c in batch.changes])
        changed = {text for text, h in claim.hashes.items() if now.get(text) != h}
        for text in changed:
            claim.hashes.pop(text)
        if not changed:
            return results
        return [dataclasses.replace(r, stored=[(c, row) for c, row in r.stored if c.text not in changed],
                                    gone=[c for c in r.gone if c.text not in changed],
                                    failed=[(c, e) for c, e in r.failed if c.text not in changed])
                for r in results]

    def _seen(self, conn: Any, batch: Batch) -> None:
        claim = batch.claim
        if not (isinstance(claim, Hashes) and claim.every_listener and claim.hashes):
            return
        name = seen_table_name(claim.table)
        seen = self.backend.table(name)
        names = [c.name for c in seen.columns if c.name != 'h']
        present = {c.text: c.key if isinstance(c.key, tuple) else (c.key,) for c in batch.changes}
        rows = [(*present[t], h) for t, h in claim.hashes.items() if h is not None and t in present]
        gone = [present[t] for t, h in claim.hashes.items() if h is None and t in present]
        single = len(names) == 1
        key = seen.c[names[0]] if single else sa.tuple_(*[seen.c[n] for n in names])
        upsert = self.backend.upsert_statement(seen, names + ['h'], names) if rows and not single else None
        if rows and not single and upsert is None:  # a dialect without an upsert statement: the old rows go first
            gone = gone + [r[:-1] for r in rows]
        for part in chunks(gone):
            conn.execute(seen.delete().where(key.in_([k[0] for k in part] if single else part)))
        if rows and single:  # the backend's bulk upsert (on DuckDB an executemany runs a statement a row)
            self.backend.insert(conn, name, names + ['h'], [list(c) for c in zip(*rows)], upsert_key=names[0])
            return
        for part in chunks(rows):
            conn.execute(upsert if upsert is not None else seen.insert(),
                         [dict(zip(names + ['h'], row)) for row in part])

    def finish(self, batch: Batch, results: list[Results], followed: set[str],
               handed: Sequence[tuple[str, str]] = ()) -> Any:
        try:
            return super().finish(batch, results, followed, handed)
        finally:
            self._let_go(batch.claim)

    def release(self, batch: Batch) -> None:
        """A batch of every listener is found again by the next poll (its rows were not marked seen); a backfill's
        or retry's goes back to the queue."""
        self._let_go(batch.claim)
        self._forget_marks(batch.claim)
        if not (isinstance(batch.claim, Hashes) and batch.claim.every_listener):
            super().release(batch)

    # ---- status ------------------------------------------------------------------------------------------------
    def pending(self, table: str) -> tuple[int | None, float | None]:
        """What this process has queued, and the rows of ``table`` written since last seen."""
        queued, _ = super().pending(table)
        if not self._polled(table) or not self.backend.has_table(seen_table_name(table)):
            return queued, None
        query = sa.select(sa.func.count()).select_from(self._difference_query(table).subquery())
        with self.backend.begin() as conn:
            waiting = conn.execute(query).scalar()
        return (queued or 0) + int(waiting), None


def _python_type(column: sa.Column) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None
