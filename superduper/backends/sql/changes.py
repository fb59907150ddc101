"""Change capture on SQL databases: every write to a followed table becomes a row, in the writer's transaction,
and consumers lease those rows, compute outside any transaction, and store results guarded by a stamp.

Tables (made on first use):

``_superduper_change_log``
    One row per written row of a followed table, written by triggers whoever writes (a row whose primary key
    changes gives two: the old key and the new), and one per row a backfill or retry queues for one listener.
    ``source`` is the primary key as the database renders it as text (a JSON array for a composite key).
    ``claim`` is the lease holding the row (NULL: free).
``_superduper_claims``
    Leases: ``id`` increases and is never reused; ``lease_until`` is on the database's clock.
``_superduper_stamps``
    Per (listener, row): the claim id whose result is stored, and the error if the model failed on the row.

How a change is applied exactly once, in order, whoever writes and whoever dies:

* A consumer *claims* free change rows (``FOR UPDATE SKIP LOCKED`` where the database has it), then inserts a claim
  row and marks the change rows with it, and commits. The claim's id is its *stamp*: it is allocated after the
  change rows were read, so after they committed.
* It reads the source rows and runs the model outside any transaction, then *finishes* in one short transaction:
  it deletes its claim row (none there: the lease expired and was taken over, so it writes nothing), and for every
  row stores the result only if the row's stamp is lower than its own, then deletes its change rows.
* Why the highest stamp is right: the last change of a row commits before any claim of it is made, so the stamp of
  whoever processes it, and any higher stamp, was allocated after that commit and so read the row's final value.
* A write through superduper marks its own change rows with a claim it takes in the same transaction (a session
  setting the triggers read on PostgreSQL and MySQL; on SQLite, the only writer, the rows after the last id), and
  after committing takes them over under a fresh claim (a fresh stamp) and computes them itself: it acknowledges
  exactly what its own transaction wrote, never another client's rows. If it dies first, its lease expires and any
  consumer takes the rows.
* Leases are renewed by a thread of the holder while it computes; an expired claim is deleted (and its change rows
  freed) by the next consumer that looks, so a dead worker's batch is done by another.

Databases followed by an earlier layout (``_superduper_changes``, one change row acknowledged by id) keep working:
their triggers write to the old table until the first process that loads the listeners replaces them, and since
that layout's jobs are not this one's, every listener's backfill is queued again then (computed once more, so the
changes pending in the old table are covered).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import sqlalchemy as sa

from superduper.backends.base import Batch, Change, Finished, LeaseLost, Results
from superduper.backends.feed import CHUNK, chunks, write_results
from superduper.backends.logs import retry_backoff
from superduper.base.background import stop_at_exit

if TYPE_CHECKING:
    from superduper.backends.sql.protocol import SQLBackend

log = logging.getLogger('superduper')
CHANGES, CLAIMS, STAMPS = '_superduper_change_log', '_superduper_claims', '_superduper_stamps'
DEADLOCK_RETRIES = 5
DELETIONS_KEPT = 24 * 3600.0  # seconds a removed output is remembered for readers (vector indexes) catching up


def digest(text: str) -> str:
    """The fixed-width index key of a row's key text (which may be longer than an index allows)."""
    return hashlib.sha1(text.encode()).hexdigest()


#: the guarded write of a batch's stamps in one statement (PostgreSQL, SQLite): a row's stamp moves to the batch's
#: only where it is lower, with the row's error (none: it succeeded; attempts count consecutive failures and the
#: next try backs off exponentially, as ``retry_backoff`` says); RETURNING says which rows moved, and so whose
#: results are stored
GUARDED_UPSERT = """
INSERT INTO {stamps} AS s (listener, digest, source, stamp, at, error, attempts, failed_at, next_try)
SELECT :listener, r.d, r.src, :stamp, {now}, r.e, CASE WHEN r.e IS NULL THEN 0 ELSE 1 END,
       CASE WHEN r.e IS NULL THEN NULL ELSE {now} END, CASE WHEN r.e IS NULL THEN NULL ELSE {now} + :delay END
FROM {rows} WHERE true
ON CONFLICT (listener, digest) DO UPDATE SET
    stamp = excluded.stamp, at = excluded.at, error = excluded.error, failed_at = excluded.failed_at,
    attempts = CASE WHEN excluded.error IS NULL THEN 0 WHEN s.error IS NULL THEN 1 ELSE s.attempts + 1 END,
    next_try = CASE WHEN excluded.error IS NULL THEN NULL
                    ELSE excluded.failed_at + :delay * (1 << CASE WHEN s.error IS NULL THEN 0 ELSE s.attempts END) END
WHERE s.stamp < excluded.stamp
RETURNING digest
"""


def _in(column: Any, values: Sequence[Any]) -> Any:
    """``column IN (...)`` with the values written into the SQL: only for ids and hex digests made here (a list of
    a thousand bound parameters costs more to send than the statement's work)."""
    if not values:
        return sa.false()
    literals = ', '.join(str(int(v)) if isinstance(v, int) else f"'{_hex(v)}'" for v in values)
    return column.op('IN')(sa.literal_column(f'({literals})'))


def _hex(value: str) -> str:
    if not all(c in '0123456789abcdef' for c in value):
        raise ValueError(f'not a hex digest: {value!r}')
    return value


class Tables:
    """The three tables of change capture, as SQLAlchemy Core tables."""

    def __init__(self, backend: 'SQLBackend'):
        meta = sa.MetaData()
        serial = sa.BigInteger().with_variant(sa.Integer, 'sqlite')  # SQLite's rowid is the AUTOINCREMENT key
        self.changes = sa.Table(
            CHANGES, meta,
            sa.Column('id', serial, primary_key=True, autoincrement=True),
            sa.Column('tbl', sa.String(255), nullable=False),
            sa.Column('source', sa.Text, nullable=False),
            sa.Column('listener', sa.String(64)),
            sa.Column('claim', sa.BigInteger),
            sa.Column('created', sa.Double, nullable=False),
            sa.Index('ix_superduper_change_log_claim', 'claim', 'id'),
            sa.Index('ix_superduper_change_log_listener', 'listener', 'claim'),
            sa.Index('ix_superduper_change_log_tbl', 'tbl'),
            sqlite_autoincrement=True,
        )
        self.claims = sa.Table(
            CLAIMS, meta,
            sa.Column('id', serial, primary_key=True, autoincrement=True),
            sa.Column('owner', sa.String(255), nullable=False),
            sa.Column('lease_until', sa.Double, nullable=False),
            sqlite_autoincrement=True,  # ids never reused: they are stamps
        )
        self.stamps = sa.Table(
            STAMPS, meta,
            sa.Column('listener', sa.String(64), primary_key=True),
            sa.Column('digest', sa.String(40), primary_key=True),
            sa.Column('source', sa.Text, nullable=False),
            sa.Column('stamp', sa.BigInteger, nullable=False),
            sa.Column('at', sa.Double, nullable=False),
            sa.Column('error', sa.Text),
            sa.Column('attempts', sa.Integer, nullable=False),
            sa.Column('failed_at', sa.Double),
            sa.Column('next_try', sa.Double),
            sa.Index('ix_superduper_stamps_retry', 'listener', 'next_try'),
        )
        try:
            meta.create_all(backend.engine, checkfirst=True)
        except sa.exc.DBAPIError:  # another process made them between the check and the create
            if not all(backend.has_table(name) for name in (CHANGES, CLAIMS, STAMPS)):
                raise


@dataclass
class Claimed:
    """The handle of a write through superduper: the claim its change rows are born with (the triggers say which
    rows it wrote)."""

    claim: int
    batch: Batch | None = None  # where writes are serialized, the write's changes as its own batch already
    needs_keys = False

    def add(self, keys: Sequence[Any]) -> None:
        pass


class LeaseKeeper:
    """Renews the leases this process holds while it computes (a daemon thread, woken every third of a lease)."""

    def __init__(self, feed: 'SQLChangeFeed'):
        self._feed = weakref.ref(feed)
        self.held: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def hold(self, claim: int) -> None:
        with self._lock:
            self.held.add(claim)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name='superduper-leases', daemon=True)
                self._thread.start()
                stop_at_exit(self)

    def drop(self, claim: int) -> None:
        with self._lock:
            self.held.discard(claim)

    def _run(self) -> None:
        while not self._stopped:
            feed = self._feed()
            if feed is None:
                return
            interval = feed.lease / 3
            self._wake.wait(interval)
            with self._lock:
                held = sorted(self.held)
            if held and not self._stopped:
                try:
                    feed.renew(held)
                except Exception as e:  # the database restarting: the next round tries again
                    log.warning('renewing %d leases failed: %s', len(held), e)
            del feed

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


class SQLChangeFeed:
    """The durable change feed of SQL databases with triggers (SQLite, PostgreSQL, MySQL/MariaDB)."""

    durable = True

    def __init__(self, backend: 'SQLBackend', lease: float = 60.0, retry_delay: float = 2.0):
        self.backend = backend
        self.lease = lease
        self.retry_delay = retry_delay
        self.owner = f'{socket.gethostname()}:{os.getpid()}'[:255]
        self.keeper = LeaseKeeper(self)
        self._next_sweep = self._next_collect = 0.0
        self._sweep_lock = threading.Lock()

    def __repr__(self) -> str:
        return f'SQLChangeFeed({self.backend!r})'

    @functools.cached_property
    def tables(self) -> Tables:
        return Tables(self.backend)

    def now(self) -> Any:
        """The database's clock in epoch seconds (leases never depend on the clocks of the machines)."""
        return sa.literal_column(self.backend.epoch_sql, sa.Double)

    # ---- which tables are followed -------------------------------------------------------------------------
    def follow(self, table: str, key: Sequence[str]) -> None:
        """Triggers recording every write to ``table`` from now on, whoever makes it."""
        self.tables  # noqa: B018 (made first: the triggers write to it)
        with self.backend.begin() as conn:
            for sql in self.backend.capture_ddl(table, list(key)):
                self.backend.run_sql(conn, sql)

    def unfollow(self, table: str) -> None:
        with self.backend.begin() as conn:
            for sql in self.backend.drop_capture_ddl(table):
                self.backend.run_sql(conn, sql)
            changes = self.tables.changes
            conn.execute(changes.delete().where(changes.c.tbl == table, changes.c.listener.is_(None)))

    # ---- writes made through superduper ----------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, conn: Any, table: str, key: Sequence[str]) -> Iterator['Claimed']:
        """Inside a write's transaction: the change rows it makes are born claimed by this process."""
        claim = self._new_claim(conn)
        self.keeper.hold(claim)
        try:
            mark = self.backend.mark_writes(conn, claim, self.tables.changes)
            handle = Claimed(claim)
            yield handle
            self.backend.unmark_writes(conn, claim, mark, self.tables.changes)
            handle.batch = self._own_batch(conn, claim)
        except BaseException:
            self.keeper.drop(claim)
            raise

    def _own_batch(self, conn: Any, claim: int) -> Batch | None:
        """Where the database runs one write transaction at a time (SQLite), a claim made inside the writing
        transaction is later than every other claim whose holder could have read the rows before this write
        committed: it is the write's stamp, and its changes need no taking over after the commit."""
        if not self.backend.capabilities.serialized_writes:
            return None
        rows = self._select_changes(conn, self.tables.changes.c.claim == claim)
        return Batch(stamp=claim, changes=self._decode(rows), claim=claim)

    def written(self, handle: 'Claimed') -> Batch | None:
        """After the write committed: its change rows under a fresh claim, whose stamp is later than the write."""
        if handle.batch is not None:
            if handle.batch.changes:
                return handle.batch
            self.release(handle.batch)  # nothing was recorded (the table has no triggers)
            return None
        return self._retrying(self._take_over, handle.claim)

    def attach(self, listeners: Any) -> None:
        pass  # the triggers know which tables are followed

    def _take_over(self, old: int) -> Batch | None:
        t = self.tables
        try:
            with self.backend.begin() as conn:
                if conn.execute(t.claims.delete().where(t.claims.c.id == old)).rowcount != 1:
                    return None  # the lease expired and a consumer has the rows
                rows = self._select_changes(conn, t.changes.c.claim == old)
                if not rows:
                    return None
                new = self._new_claim(conn)
                conn.execute(t.changes.update().where(t.changes.c.claim == old).values(claim=new))
        finally:
            self.keeper.drop(old)
        self.keeper.hold(new)
        return Batch(stamp=new, changes=self._decode(rows), claim=new)

    # ---- consumers ----------------------------------------------------------------------------------------------
    def claim(self, limit: int, listener: str | None = None) -> Batch | None:
        """Lease up to ``limit`` free changes (only those queued for ``listener`` if given), oldest first."""
        self.sweep()
        return self._retrying(self._claim, limit, listener)

    def _claim(self, limit: int, listener: str | None) -> Batch | None:
        t = self.tables
        c = t.changes.c
        stmt = sa.select(c.id, c.tbl, c.source, c.listener).where(c.claim.is_(None))
        if listener is not None:
            stmt = stmt.where(c.listener == listener)
        stmt = stmt.order_by(c.id).limit(limit)
        if self.backend.capabilities.skip_locked:
            stmt = stmt.with_for_update(skip_locked=True)
        with self.backend.begin() as conn:
            if self.backend.capabilities.serialized_writes:  # nobody writes meanwhile: mark and read at once
                new = self._new_claim(conn)
                mark = t.changes.update().where(c.id.in_(stmt.with_only_columns(c.id).scalar_subquery()))
                rows = conn.execute(mark.values(claim=new).returning(c.id, c.tbl, c.source, c.listener)).all()
                if not rows:
                    conn.rollback()
                    return None
                rows.sort(key=lambda r: r.id)
            else:
                rows = conn.execute(stmt).all()
                if not rows:
                    return None
                new = self._new_claim(conn)  # after the read: the stamp is later than every change taken
                for ids in chunks([r.id for r in rows]):
                    conn.execute(t.changes.update().where(_in(c.id, ids)).values(claim=new))
        self.keeper.hold(new)
        return Batch(stamp=new, changes=self._decode(rows), claim=new)

    def hand_off(self, batch: Batch) -> None:
        """Another process (a Dask worker) computes the batch and renews its lease from now on."""
        if batch.claim is not None:
            self.keeper.drop(batch.claim)

    def adopt(self, batch: Batch) -> None:
        """This process computes a batch another claimed: renew its lease here."""
        if batch.claim is not None:
            self.keeper.hold(batch.claim)

    def release(self, batch: Batch) -> None:
        """Give the batch's changes back (free to be claimed again) and drop its lease."""
        if batch.claim is None:
            return
        t = self.tables
        try:
            with self.backend.begin() as conn:
                if conn.execute(t.claims.delete().where(t.claims.c.id == batch.claim)).rowcount:
                    conn.execute(t.changes.update().where(t.changes.c.claim == batch.claim).values(claim=None))
        finally:
            self.keeper.drop(batch.claim)

    def renew(self, claims: list[int]) -> None:
        t = self.tables
        with self.backend.begin() as conn:
            for ids in chunks(claims):
                conn.execute(t.claims.update().where(t.claims.c.id.in_(ids))
                             .values(lease_until=self.now() + self.lease))

    def sweep(self, force: bool = False) -> None:
        """Free the changes of expired leases (their holders died or hung) every few seconds; every lease, also
        free changes marked by claims that never committed, and forget stamps nobody can undercut any more.

        Housekeeping runs in short transactions of its own, and one the database aborts to break a deadlock (with
        a finish locking the same rows) is skipped: the next round does it."""
        with self._sweep_lock:
            now = time.monotonic()
            if not force and now < self._next_sweep:
                return
            self._next_sweep = now + min(self.lease / 4, 5.0)
            collect = force or now >= self._next_collect
            if collect:
                self._next_collect = now + self.lease
        self._quietly(self._free_expired)
        if collect:
            self._quietly(self._free_orphans)
            self._quietly(self._forget_stamps)
            self._quietly(self._forget_deletions)

    def _forget_deletions(self) -> None:
        self.backend.output_log().trim(DELETIONS_KEPT)

    def _quietly(self, step: Any) -> None:
        try:
            step()
        except sa.exc.DBAPIError as e:
            if not self.backend.is_deadlock(e):
                raise
            log.debug('%s skipped (a deadlock with a consumer); the next sweep does it', step.__name__)

    def _free_expired(self) -> None:
        t = self.tables
        stmt = sa.select(t.claims.c.id).where(t.claims.c.lease_until < self.now())
        if self.backend.capabilities.skip_locked:
            stmt = stmt.with_for_update(skip_locked=True)  # a holder finishing right now keeps its claim
        with self.backend.begin() as conn:
            expired = list(conn.execute(stmt).scalars())
            for ids in chunks(expired):
                conn.execute(t.claims.delete().where(_in(t.claims.c.id, ids)))
                conn.execute(t.changes.update().where(_in(t.changes.c.claim, ids)).values(claim=None))
        if expired:
            log.warning('took over %d expired leases (their consumers died or hung)', len(expired))

    def _free_orphans(self) -> None:
        """Changes marked by a claim whose row never committed (a session setting left behind)."""
        t = self.tables
        orphan = ~sa.exists().where(t.claims.c.id == t.changes.c.claim)
        with self.backend.begin() as conn:
            conn.execute(t.changes.update().where(t.changes.c.claim.is_not(None), orphan,
                                                  t.changes.c.created < self.now() - self.lease).values(claim=None))

    def _forget_stamps(self) -> None:
        """Stamps lower than every live claim, old enough that no claim still unseen could be lower: no result
        can be undercut through them any more. Rows with an error stay (they are the failure records)."""
        t = self.tables
        s = t.stamps.c
        with self.backend.engine.connect() as conn:
            lowest = conn.execute(sa.select(sa.func.min(t.claims.c.id))).scalar()
        old = sa.and_(s.error.is_(None), s.at < self.now() - 2 * self.lease)
        if lowest is not None:
            old = sa.and_(old, s.stamp < lowest)
        with self.backend.engine.connect() as conn:
            found = conn.execute(sa.select(s.listener, s.digest).where(old).order_by(s.listener, s.digest)
                                 .limit(10 * CHUNK)).all()
        by_listener: dict[str, list[str]] = {}
        for listener, d in found:
            by_listener.setdefault(listener, []).append(d)
        for listener, digests in by_listener.items():
            for ds in chunks(digests):
                with self.backend.begin() as conn:  # checked again: a finish may have moved one meanwhile
                    conn.execute(t.stamps.delete().where(s.listener == listener, _in(s.digest, ds), old))

    def _new_claim(self, conn: Any) -> int:
        t = self.tables
        result = conn.execute(t.claims.insert().values(owner=self.owner, lease_until=self.now() + self.lease))
        return int(result.inserted_primary_key[0])

    def _select_changes(self, conn: Any, where: Any) -> list:
        c = self.tables.changes.c
        return conn.execute(sa.select(c.id, c.tbl, c.source, c.listener).where(where).order_by(c.id)).all()

    def _decode(self, rows: list) -> list[Change]:
        by_table: dict[str, list] = {}
        for row in rows:
            by_table.setdefault(row.tbl, []).append(row)
        changes = []
        for table, group in by_table.items():
            keys = self.backend.decode_keys(table, [r.source for r in group])
            changes.extend(Change(table, key, r.listener, r.source) for r, key in zip(group, keys))
        return changes

    # ---- results -------------------------------------------------------------------------------------------------
    def finish(self, batch: Batch, results: list[Results], followed: set[str],
               handed: Sequence[tuple[str, str]] = ()) -> Finished:
        """Store the batch's results where no newer result is stored, and release it; raises ``LeaseLost`` (having
        written nothing) if the lease was taken over."""
        for res in results:
            self.backend.output_log().prepare(res.outputs_table)
        return self._retrying(self._finish, batch, results, followed, handed)

    def _retrying(self, transaction: Any, *args: Any) -> Any:
        """Run ``transaction`` again when the database aborted it to break a deadlock (it changed nothing)."""
        for attempt in range(DEADLOCK_RETRIES):
            try:
                return transaction(*args)
            except sa.exc.DBAPIError as e:
                if attempt == DEADLOCK_RETRIES - 1 or not self.backend.is_deadlock(e):
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError('unreachable')

    def _finish(self, batch: Batch, results: list[Results], followed: set[str],
                handed: Sequence[tuple[str, str]]) -> Finished:
        t = self.tables
        finished = Finished(stored={}, gone={})
        chain = None
        with self.backend.begin() as conn:
            if batch.claim is not None:
                if conn.execute(t.claims.delete().where(t.claims.c.id == batch.claim)).rowcount != 1:
                    raise LeaseLost(f'lease {batch.claim} expired and was taken over')
            writes_followed = any(r.outputs_table in followed and (r.stored or r.gone or r.failed) for r in results)
            if writes_followed:
                chain = self._new_claim(conn)
                mark = self.backend.mark_writes(conn, chain, t.changes)
            for res in sorted(results, key=lambda r: r.listener):
                stored, gone = self._store(conn, res, batch.stamp)
                finished.stored[res.listener], finished.gone[res.listener] = stored, gone
            chained = None
            if writes_followed:
                self.backend.unmark_writes(conn, chain, mark, t.changes)
                chained = self._own_batch(conn, chain)
            if batch.claim is not None:
                self._hand(conn, batch.claim, handed)
                conn.execute(t.changes.delete().where(t.changes.c.claim == batch.claim))
        if batch.claim is not None:
            self.keeper.drop(batch.claim)
        if chain is not None:
            self.keeper.hold(chain)
            if chained is None:
                finished.chained = self._retrying(self._take_over, chain)
            elif chained.changes:
                finished.chained = chained
            else:
                self.release(chained)  # nothing was recorded
        return finished

    def _hand(self, conn: Any, claim: int, handed: Sequence[tuple[str, str]]) -> None:
        """Queue the claim's changes of each ``(table, listener)`` for that listener, free for any consumer."""
        t = self.tables
        c = t.changes.c
        for table, listener in handed:
            rows = sa.select(c.tbl, c.source, sa.literal(listener, sa.String(64)),
                             sa.cast(sa.null(), sa.BigInteger), c.created)
            conn.execute(t.changes.insert().from_select(
                ['tbl', 'source', 'listener', 'claim', 'created'],
                rows.where(c.claim == claim, c.tbl == table, c.listener.is_(None))))

    def _store(self, conn: Any, res: Results, stamp: int) -> tuple[list[Change], list[Change]]:
        """The guarded write of one listener's results; returns the stored and the removed changes."""
        entries: dict[str, tuple[str, Change, Any]] = {}
        for change, row in res.stored:
            entries[digest(change.text)] = ('stored', change, row)
        for change in res.gone:
            entries[digest(change.text)] = ('gone', change, None)
        for change, error in res.failed:
            entries[digest(change.text)] = ('failed', change, error)
        if not entries:
            return [], []
        won = self._stamp(conn, res.listener, entries, stamp)
        stored = [(c, row) for d in won for kind, c, row in (entries[d],) if kind == 'stored']
        removed = [entries[d][1] for d in won if entries[d][0] != 'stored']
        # the outputs' counter is taken last: see ``superduper.backends.sql.outputs``
        write_results(self.backend.output_log(), conn, res, stored, removed)
        return [c for c, _ in stored], removed

    def _stamp(self, conn: Any, listener: str, entries: dict[str, tuple[str, Change, Any]], stamp: int) -> list[str]:
        """Move the rows' stamps that are lower than ``stamp`` to it (with the row's error, or none), locking them
        in digest order so that concurrent finishes never deadlock on each other; returns the digests moved."""
        rows = [(d, entries[d][1].text, None if entries[d][0] != 'failed' else str(entries[d][2])[:10000])
                for d in sorted(entries)]
        rows_sql = self.backend.rows_parameter_sql()
        if rows_sql is not None:  # one statement: insert, or update where lower, and say which
            sql = GUARDED_UPSERT.format(stamps=STAMPS, now=self.backend.epoch_sql, rows=rows_sql)
            params = {'listener': listener, 'stamp': stamp, 'delay': self.retry_delay,
                      **self.backend.rows_parameter(rows)}
            return list(conn.execute(sa.text(sql), params).scalars())
        return self._stamp_in_steps(conn, listener, rows, stamp)

    def _stamp_in_steps(self, conn: Any, listener: str, rows: list[tuple[str, str, str | None]], stamp: int) -> list[str]:
        """``_stamp`` for databases without a conditional upsert that says what it wrote (MySQL): add the missing
        stamp rows, lock them all, compare, update."""
        t = self.tables
        s = t.stamps.c
        digests = [d for d, _, _ in rows]
        conn.execute(self.backend.insert_ignore(t.stamps, ['listener', 'digest']),
                     [{'listener': listener, 'digest': d, 'source': text, 'stamp': 0, 'at': 0.0, 'attempts': 0}
                      for d, text, _ in rows])
        current: dict[str, tuple[int, str | None, int]] = {}
        for ds in chunks(digests):
            stmt = sa.select(s.digest, s.stamp, s.error, s.attempts).where(s.listener == listener, _in(s.digest, ds))
            stmt = stmt.order_by(s.digest)
            if self.backend.capabilities.skip_locked:
                stmt = stmt.with_for_update()
            current.update({r.digest: (r.stamp, r.error, r.attempts) for r in conn.execute(stmt)})
        errors = {d: e for d, _, e in rows}
        won = [d for d in digests if current[d][0] < stamp]
        ok = [d for d in won if errors[d] is None]
        for ds in chunks(ok):
            conn.execute(t.stamps.update().where(s.listener == listener, _in(s.digest, ds)).values(
                stamp=stamp, at=self.now(), error=None, attempts=0, failed_at=None, next_try=None))
        failed = []
        for d in won:
            if errors[d] is not None:
                _, previous_error, attempts = current[d]
                attempts = attempts + 1 if previous_error is not None else 1
                delay = retry_backoff(self.retry_delay, attempts)
                failed.append({'d': d, 'e': errors[d], 'n': attempts, 'delay': delay})
        if failed:
            conn.execute(
                t.stamps.update().where(s.listener == listener, s.digest == sa.bindparam('d')).values(
                    stamp=stamp, at=self.now(), error=sa.bindparam('e'), attempts=sa.bindparam('n'),
                    failed_at=self.now(), next_try=self.now() + sa.bindparam('delay', type_=sa.Double)),
                failed,
            )
        return won

    # ---- queueing work ------------------------------------------------------------------------------------------
    def enqueue(self, table: str, listener: str, where: Any = None, keys: Sequence[Any] | None = None,
                refs: Sequence[str] | None = None) -> int:
        """Queue rows of ``table`` for one listener: those ``where`` (a condition) selects, those with these
        ``keys``, those with these key texts (``refs``, as this feed stores them: failed rows), or all. Returns how
        many were queued."""
        t = self.tables
        texts = refs if keys is None else self._texts(table, keys)
        with self.backend.begin() as conn:
            if texts is not None:
                stmt = t.changes.insert().values(created=self.now())
                for chunk in chunks(list(texts)):
                    conn.execute(stmt, [{'tbl': table, 'source': text, 'listener': listener} for text in chunk])
                return len(texts)
            source = self.backend.table(table)
            key_text = self.backend.key_text([source.c[k] for k in self.backend.primary_key(table)])
            rows = sa.select(sa.literal(table, sa.String(255)), key_text, sa.literal(listener, sa.String(64)),
                             self.now())
            count = sa.select(sa.func.count()).select_from(source)
            if where is not None:
                rows = rows.where(self.backend.compile_condition(source, where))
                count = count.where(self.backend.compile_condition(source, where))
            conn.execute(t.changes.insert().from_select(['tbl', 'source', 'listener', 'created'], rows))
            return conn.execute(count).scalar_one()  # the same snapshot (one writer: SQLite; or under its lock)

    def _texts(self, table: str, keys: Sequence[Any]) -> list[str]:
        """The key texts of these keys as the database renders them (as Python would for rows that are gone)."""
        found = self.backend.render_keys(table, list(keys))
        return [found.get(k) or (json.dumps(list(k), default=str) if isinstance(k, tuple) else str(k)) for k in keys]

    # ---- status --------------------------------------------------------------------------------------------------
    def problem_with(self, table: str) -> str | None:
        return None

    def pending(self, table: str) -> tuple[int | None, float | None]:
        c = self.tables.changes.c
        stmt = sa.select(sa.func.count(), self.now() - sa.func.min(c.created)).where(c.tbl == table)
        with self.backend.engine.connect() as conn:
            count, age = conn.execute(stmt).one()
        return count, None if age is None else max(0.0, float(age))

    def pending_for(self, listener: str) -> int | None:
        c = self.tables.changes.c
        with self.backend.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(c.listener == listener)).scalar_one()

    def failure_log(self) -> 'StampedFailures':
        return StampedFailures(self)

    def close(self) -> None:
        self.keeper.stop()


class StampedFailures:
    """The rows a listener's model failed on, kept with their stamps (so a failure and an output never disagree)."""

    def __init__(self, feed: SQLChangeFeed):
        self.feed = feed

    def _select(self, listener: str) -> Any:
        s = self.feed.tables.stamps.c
        return sa.select(s.source, s.error, s.attempts, s.failed_at).where(s.listener == listener, s.error.is_not(None))

    def count(self, listener: str) -> int:
        s = self.feed.tables.stamps.c
        stmt = sa.select(sa.func.count()).where(s.listener == listener, s.error.is_not(None))
        with self.feed.backend.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()

    def texts(self, listener: str) -> list[str]:
        with self.feed.backend.engine.connect() as conn:
            return [r.source for r in conn.execute(self._select(listener))]

    def list(self, listener: str, table: str) -> list[dict]:
        import datetime

        with self.feed.backend.engine.connect() as conn:
            rows = conn.execute(self._select(listener)).all()
        keys = self.feed.backend.decode_keys(table, [r.source for r in rows])
        found = [{'source': key, 'error': r.error, 'attempts': r.attempts,
                  'failed_at': datetime.datetime.fromtimestamp(r.failed_at)} for r, key in zip(rows, keys)]
        return sorted(found, key=lambda f: str(f['source']))

    def take_due(self, listener: str, max_attempts: int, delay: float = 0.0) -> list[str]:
        """The key texts of failed rows whose next try is due, put off by a lease so they are queued once."""
        feed = self.feed
        s = feed.tables.stamps.c
        due = sa.and_(s.listener == listener, s.error.is_not(None), s.attempts < max_attempts,
                      s.next_try <= feed.now())
        with feed.backend.begin() as conn:
            rows = conn.execute(sa.select(s.digest, s.source).where(due).limit(CHUNK)).all()
            if rows:
                conn.execute(feed.tables.stamps.update().where(s.listener == listener,
                                                               s.digest.in_([r.digest for r in rows]))
                             .values(next_try=feed.now() + feed.lease))
        return [r.source for r in rows]

    def clear(self, listener: str) -> None:
        s = self.feed.tables.stamps.c
        with self.feed.backend.begin() as conn:
            conn.execute(self.feed.tables.stamps.delete().where(s.listener == listener))
