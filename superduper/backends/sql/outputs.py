"""Versions of outputs tables on SQL databases (``superduper.backends.base.OutputLog``).

``_superduper_output_seq``
    One row per outputs table: ``n``, the number of its last write, and ``floor``, the highest number of a
    deletion forgotten. A write increments ``n`` in its own transaction and so holds the row locked until it
    commits: the next writer gets ``n + 1`` only after that, and a reader that sees ``n`` sees every write up to it.
``_superduper_output_deletes``
    One row per removed output: the table, the source key (``superduper.base.keys``' JSON) and the write's number.
    Kept a day; a reader whose last look is older than the floor reads the whole table again.

An outputs table is written by one listener and its workers; the counter serialises only their output writes,
which take it last, after everything else their transaction locks (the stamps), so no two writers wait on each
other in opposite orders.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

import sqlalchemy as sa

from superduper.backends.base import CHUNK_ID, OUTPUT_SEQ
from superduper.backends.outputs import SOURCE, OutputRows
from superduper.base.query import Compare
from superduper.base.keys import dump_key, load_key

if TYPE_CHECKING:
    from superduper.backends.sql.protocol import SQLBackend

COUNTERS, DELETES = '_superduper_output_seq', '_superduper_output_deletes'


class SQLOutputLog(OutputRows):
    ordered = True  # numbers are given in commit order

    def __init__(self, backend: 'SQLBackend'):
        self.backend = backend
        meta = sa.MetaData()
        self.counters = sa.Table(
            COUNTERS, meta,
            sa.Column('tbl', sa.String(255), primary_key=True),
            sa.Column('n', sa.BigInteger, nullable=False),
            sa.Column('floor', sa.BigInteger, nullable=False),
        )
        self.deletes = sa.Table(
            DELETES, meta,
            sa.Column('tbl', sa.String(255), primary_key=True),
            sa.Column('seq', sa.BigInteger, primary_key=True),
            sa.Column('digest', sa.String(40), primary_key=True),  # of the source key (which may be long)
            sa.Column('source', sa.Text, nullable=False),
            sa.Column('at', sa.Double, nullable=False),
        )
        try:
            meta.create_all(backend.engine, checkfirst=True)
        except sa.exc.DBAPIError:  # another process made them between the check and the create
            if not all(backend.has_table(name) for name in (COUNTERS, DELETES)):
                raise
        self._prepared: set[str] = set()
        self._lock = threading.Lock()  # only for the set above

    def prepare(self, table: str) -> None:
        with self._lock:
            if table in self._prepared:
                return
        self._index_seq(table)
        c = self.counters.c
        try:
            with self.backend.begin() as conn:  # read first: some databases enforce no primary key (BigQuery, Trino)
                if conn.execute(sa.select(c.tbl).where(c.tbl == table)).first() is None:
                    conn.execute(self.counters.insert(), {'tbl': table, 'n': 0, 'floor': 0})
        except sa.exc.IntegrityError:  # there already
            pass
        with self._lock:
            self._prepared.add(table)

    def _index_seq(self, table: str) -> None:
        """An index on the outputs table's ``OUTPUT_SEQ`` (readers ask for the rows past a number)."""
        name = 'ix_superduper_seq_' + hashlib.sha1(table.encode()).hexdigest()[:16]
        columns = self.backend.table(table).c
        indexes = [sa.Index(name, columns[OUTPUT_SEQ])]
        if CHUNK_ID in columns:  # a flattening listener's chunks are replaced by their source
            indexes.append(sa.Index(name.replace('_seq_', '_src_'), columns[SOURCE]))
        for index in indexes:
            try:
                index.create(self.backend.engine, checkfirst=True)
            except sa.exc.DBAPIError:  # made by another process meanwhile
                pass

    def advance(self, conn: Any, table: str) -> int:
        c = self.counters.c
        bump = self.counters.update().where(c.tbl == table).values(n=c.n + 1)
        if self.backend.dialect.update_returning:  # one round trip
            found = conn.execute(bump.returning(c.n)).scalar()
            if found is not None:
                return int(found)
        elif conn.execute(bump).rowcount:
            return int(conn.execute(sa.select(c.n).where(c.tbl == table)).scalar_one())
        conn.execute(self.counters.insert(), {'tbl': table, 'n': 1, 'floor': 0})  # a table made before versions
        return 1

    def _log_deletions(self, conn: Any, table: str, seq: int, keys: Sequence[Any]) -> None:
        now = time.time()
        texts = dict.fromkeys(dump_key(s) for s in keys)
        conn.execute(self.deletes.insert(), [
            {'tbl': table, 'seq': seq, 'digest': hashlib.sha1(t.encode()).hexdigest(), 'source': t, 'at': now}
            for t in texts
        ])

    def _chunk_ids(self, conn: Any, table: str, sources: Sequence[Any]) -> list:
        where = Compare(SOURCE, 'in', tuple(sources))
        return [row[0] for batch in self.backend.select(table, [CHUNK_ID], where, conn=conn) for row in batch]

    def head(self, table: str) -> tuple[int, int] | None:
        c = self.counters.c
        with self.backend.engine.connect() as conn:
            row = conn.execute(sa.select(c.n, c.floor).where(c.tbl == table)).first()
        return None if row is None else (int(row.n), int(row.floor))

    def deleted(self, table: str, since: int, upto: int) -> list[tuple[Any, int]] | None:
        counters, c = self.counters.c, self.deletes.c
        # one statement, so the floor and the deletions are read from the same snapshot
        stmt = (sa.select(counters.floor, c.source, c.seq)
                .select_from(self.counters.outerjoin(self.deletes, sa.and_(c.tbl == counters.tbl, c.seq > since,
                                                                          c.seq <= upto)))
                .where(counters.tbl == table))
        with self.backend.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows or rows[0].floor > since:
            return None
        return [(load_key(r.source), int(r.seq)) for r in rows if r.source is not None]

    def trim(self, older_than: float) -> None:
        c = self.deletes.c
        cutoff = time.time() - older_than
        with self.backend.engine.connect() as conn:
            cuts = conn.execute(sa.select(c.tbl, sa.func.max(c.seq)).where(c.at < cutoff).group_by(c.tbl)).all()
        for table, cut in cuts:
            with self.backend.begin() as conn:
                counters = self.counters.c
                conn.execute(self.counters.update().where(counters.tbl == table, counters.floor < cut)
                             .values(floor=cut))
                conn.execute(self.deletes.delete().where(c.tbl == table, c.seq <= cut))

    def forget(self, table: str) -> None:
        with self.backend.begin() as conn:
            conn.execute(self.counters.delete().where(self.counters.c.tbl == table))
            conn.execute(self.deletes.delete().where(self.deletes.c.tbl == table))
        with self._lock:
            self._prepared.discard(table)
