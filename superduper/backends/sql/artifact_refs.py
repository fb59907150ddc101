"""Artifact references in a SQL table: one row per (digest, holder), and a lock row per digest (holder ``''``).

A holder first takes the lock rows of what it holds (an ``UPDATE``: a row lock on PostgreSQL and MariaDB, the
database's write lock on SQLite), creating those that are missing, then records its rows; the caller writes the
bytes after this commits. A collection takes one digest's lock row, counts its holders and, with none, deletes the
bytes and the lock row before committing: a new holder of the same digest waits for that commit and then writes the
bytes again. Lock rows are taken in digest order, so holders do not deadlock each other.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from superduper.backends.base import ARTIFACT_REFS, artifact_digest

LOCK = ''  # the holder name of a digest's lock row
CHUNK = 500
ATTEMPTS = 5  # a holder that lost a race to create a lock row, or a deadlock victim, tries again


class SQLArtifactRefs:
    def __init__(self, engine: sa.Engine, lock: str = LOCK):
        self.engine = engine
        self.lock = lock  # another holder name where the database stores '' as NULL (Oracle)
        meta = sa.MetaData()
        self.table = sa.Table(
            ARTIFACT_REFS,
            meta,
            sa.Column('digest', sa.String(64), primary_key=True),
            sa.Column('holder', sa.String(255), primary_key=True),
            sa.Column('held_at', sa.Double, nullable=False),
        )
        meta.create_all(engine, checkfirst=True)

    def hold(self, holder: str, keys: Iterable[str]) -> None:
        digests = sorted({artifact_digest(k) for k in keys})
        if not digests:
            return
        for attempt in range(ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    now = time.time()
                    for chunk in _chunks(digests):
                        self._lock(conn, chunk, now)
                        self._record(conn, holder, chunk, now)
                return
            except sa.exc.DBAPIError:  # a lock row created meanwhile by another holder, or a deadlock victim
                if attempt == ATTEMPTS - 1:
                    raise

    def _lock(self, conn: sa.Connection, digests: Sequence[str], now: float) -> None:
        c = self.table.c
        conn.execute(self.table.update().where(c.holder == self.lock, c.digest.in_(digests)).values(held_at=now))
        present = set(conn.execute(sa.select(c.digest).where(c.holder == self.lock, c.digest.in_(digests))).scalars())
        absent = [d for d in digests if d not in present]
        if absent:
            conn.execute(self.table.insert(), [{'digest': d, 'holder': self.lock, 'held_at': now} for d in absent])

    def _record(self, conn: sa.Connection, holder: str, digests: Sequence[str], now: float) -> None:
        c = self.table.c
        mine = c.holder == holder
        conn.execute(self.table.update().where(mine, c.digest.in_(digests)).values(held_at=now))
        held = set(conn.execute(sa.select(c.digest).where(mine, c.digest.in_(digests))).scalars())
        new = [d for d in digests if d not in held]
        if new:
            conn.execute(self.table.insert(), [{'digest': d, 'holder': holder, 'held_at': now} for d in new])

    def release(self, holder: str, keys: Iterable[str] | None = None) -> list[str]:
        c = self.table.c
        with self.engine.begin() as conn:
            if keys is None:
                released = list(conn.execute(sa.select(c.digest).where(c.holder == holder)).scalars())
                conn.execute(self.table.delete().where(c.holder == holder))
                return released
            released = []
            for chunk in _chunks(sorted({artifact_digest(k) for k in keys})):
                found = list(conn.execute(sa.select(c.digest).where(c.holder == holder, c.digest.in_(chunk))).scalars())
                conn.execute(self.table.delete().where(c.holder == holder, c.digest.in_(found)))
                released += found
            return released

    def release_stale(self, holder: str, live: set[str], before: float) -> list[str]:
        c = self.table.c
        with self.engine.begin() as conn:
            old = conn.execute(sa.select(c.digest).where(c.holder == holder, c.held_at < before)).scalars()
            stale = [d for d in old if d not in live]
            for chunk in _chunks(stale):
                conn.execute(self.table.delete().where(c.holder == holder, c.digest.in_(chunk), c.held_at < before))
        return stale

    def held_by(self, holder: str) -> list[str]:
        c = self.table.c
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(c.digest).where(c.holder == holder)).scalars())

    def holders(self, prefix: str = '') -> list[str]:
        c = self.table.c
        named = sa.func.substr(c.holder, 1, len(prefix)) == prefix if prefix else sa.true()  # no LIKE: no escaping
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(c.holder).distinct().where(c.holder != self.lock, named)).scalars())

    def collect(self, keys: Iterable[str], delete: Callable[[str], None]) -> list[str]:
        return [d for d in sorted({artifact_digest(k) for k in keys}) if self._collect_one(d, delete)]

    def _collect_one(self, digest: str, delete: Callable[[str], None]) -> bool:
        c = self.table.c
        with self.engine.begin() as conn:
            locked = conn.execute(self.table.update().where(c.holder == self.lock, c.digest == digest)
                                  .values(held_at=time.time())).rowcount
            held = conn.execute(sa.select(sa.func.count()).where(c.digest == digest, c.holder != self.lock)).scalar()
            if not locked or held:  # still held, or never recorded here (nothing says it is free)
                return False
            delete(digest)  # under the lock: a new holder of this digest writes the bytes after this commits
            conn.execute(self.table.delete().where(c.holder == self.lock, c.digest == digest))
        return True

    def drop(self) -> None:
        self.table.drop(self.engine, checkfirst=True)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]
