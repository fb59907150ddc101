"""Durable change capture: every write to a followed table leaves a row in ``_superduper_changes``.

Database triggers (SQLite, PostgreSQL, MariaDB/MySQL) write the change rows in the same transaction as the write,
whoever makes it. Consumers (a background thread in the embedded default, ``superduper start`` workers in a
deployment) claim change rows in id order — with ``FOR UPDATE SKIP LOCKED`` where the database has it, so workers
share the work without taking the same rows — bring the listeners up to date, and delete the rows in the same
transaction. A consumer that dies leaves its rows to the next one: at-least-once delivery, and since outputs are
upserts keyed by the source row, an exactly-once effect.

Writes made through the query API are followed at once in the writing process (outputs exist when ``execute()``
returns); the change rows they produced are then acknowledged, so nobody computes them twice.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from typing import TYPE_CHECKING, Any, Iterator

import sqlalchemy as sa

from superduper.base.background import BackgroundConsumer

if TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer


class ChangeFeed:
    def __init__(self, db: 'Datalayer'):
        self.db = db
        self.backend = db.databackend
        self.enabled = bool(getattr(self.backend, 'captures_changes', False))
        self.lock = threading.Lock()  # one consumer at a time in this process
        self._consumer = BackgroundConsumer('superduper-changes', self.consume, lambda: db.listening.retry_due())

    # ---- which tables are followed ----------------------------------------------------------------------------
    def follow(self, table: str) -> None:
        if self.enabled:
            self.backend.install_capture(table, self.db.table_info(table).primary_key[0])

    def unfollow(self, table: str) -> None:
        if self.enabled and not self.db.listening.followers(table) and table in self.backend.table_names():
            self.backend.remove_capture(table)

    # ---- writes made here -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def own_writes(self, conn: Any, table: str) -> Iterator[list]:
        """Inside a write's transaction: collects the ids of the change rows the write made, to acknowledge once this
        process has followed it."""
        own: list = []
        if not self.enabled or not self.db.listening.followers(table):
            yield own
            return
        changes = self.backend.changes
        before = conn.execute(sa.select(sa.func.max(changes.c.id))).scalar() or 0
        yield own
        own.extend(conn.execute(
            sa.select(changes.c.id).where(changes.c.tbl == table, changes.c.id > before)
        ).scalars())

    def acknowledge(self, ids: list) -> None:
        if not ids:
            return
        changes = self.backend.changes
        with self.backend.begin() as conn:
            for i in range(0, len(ids), 1000):
                conn.execute(changes.delete().where(changes.c.id.in_(ids[i : i + 1000])))

    def enqueue_backfill(self, listener: Any) -> int:
        """One change row per row the listener selects, for that listener only: the backfill survives the process
        that applied the listener, and workers share it. Returns how many rows."""
        backend, changes = self.backend, self.backend.changes
        source = backend.table(listener.source)
        key = source.c[self.db.table_info(listener.source).primary_key[0]]
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        rows = sa.select(
            sa.literal(listener.source, sa.String(255)), sa.cast(key, sa.String(255)), sa.literal('upsert', sa.String(8)),
            sa.literal(listener.uuid, sa.String(64)), sa.literal(now, sa.DateTime),
        )
        if listener.select.where is not None:
            rows = rows.where(backend._where(source, listener.select.where))
        with backend.begin() as conn:
            conn.execute(changes.insert().from_select(['tbl', 'source', 'op', 'listener', 'created_at'], rows))
            return conn.execute(sa.select(sa.func.count()).where(changes.c.listener == listener.uuid)).scalar_one()

    def acknowledge_backfill(self, listener_uuid: str, sources: list) -> None:
        changes = self.backend.changes
        keys = [str(s) for s in sources]
        with self.backend.begin() as conn:
            for i in range(0, len(keys), 1000):
                conn.execute(changes.delete().where(changes.c.listener == listener_uuid,
                                                    changes.c.source.in_(keys[i : i + 1000])))

    def pending_for(self, listener_uuid: str) -> int:
        changes = self.backend.changes
        stmt = sa.select(sa.func.count()).where(changes.c.listener == listener_uuid)
        with self.backend.engine.connect() as conn:
            return conn.execute(stmt).scalar_one()

    # ---- consuming ----------------------------------------------------------------------------------------------
    def consume(self, limit: int = 1000) -> int:
        """Follow up to ``limit`` recorded changes; returns how many were taken."""
        if not self.enabled:
            return 0
        with self.lock:
            return self._consume(limit)

    def _consume(self, limit: int) -> int:
        changes = self.backend.changes
        stmt = sa.select(changes.c.id, changes.c.tbl, changes.c.source, changes.c.op, changes.c.listener)
        stmt = stmt.order_by(changes.c.id).limit(limit)
        if self.backend.skip_locked:
            with self.backend.begin() as conn:  # the claimed rows stay locked until they are processed and deleted
                rows = conn.execute(stmt.with_for_update(skip_locked=True)).all()
                if rows:
                    self._apply(rows)
                    conn.execute(changes.delete().where(changes.c.id.in_([r.id for r in rows])))
            return len(rows)
        with self.backend.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if rows:
            self._apply(rows)
            self.acknowledge([r.id for r in rows])
        return len(rows)

    def _apply(self, rows: list) -> None:
        latest: dict[tuple[str, str | None], dict[str, str]] = {}
        for row in rows:  # in id order: the last change of a row decides
            latest.setdefault((row.tbl, row.listener), {})[row.source] = row.op
        listening = self.db.listening
        if not all(listening.knows(table, only) for table, only in latest):
            listening.reload()  # applied by another process since we looked: never drop its changes
        for (table, only), ops in latest.items():
            if not self.db.listening.followers(table):
                continue
            convert = self._key_type(table)
            upserts = [convert(s) for s, op in ops.items() if op == 'upsert']
            deletes = [convert(s) for s, op in ops.items() if op == 'delete']
            if upserts:
                self.db.listening.after_write(table, upserts, only=only)
            if deletes:
                self.db.listening.after_write(table, deletes, deleted=True, only=only)

    def _key_type(self, table: str) -> Any:
        info = self.db.table_info(table)
        return int if info.schema.types[info.primary_key[0]].name == 'int' else str

    # ---- status ------------------------------------------------------------------------------------------------
    def pending(self, table: str) -> tuple[int, float | None]:
        """How many changes of ``table`` wait, and the age in seconds of the oldest."""
        if not self.enabled:
            return 0, None
        changes = self.backend.changes
        stmt = sa.select(sa.func.count(), sa.func.min(changes.c.created_at)).where(changes.c.tbl == table)
        with self.backend.engine.connect() as conn:
            count, oldest = conn.execute(stmt).one()
        if oldest is None:
            return count, None
        if isinstance(oldest, str):  # SQLite keeps the trigger's text timestamp
            oldest = datetime.datetime.fromisoformat(oldest)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        return count, max(0.0, (now - oldest).total_seconds())

    # ---- the background consumer --------------------------------------------------------------------------------
    def start(self, interval: float) -> None:
        """Follow changes from other clients in a daemon thread, every ``interval`` seconds when idle."""
        if self.enabled:
            self._consumer.start(interval)

    def stop(self) -> None:
        self._consumer.stop()
