"""Search pushed down to PostgreSQL with pgvector: the vectors never leave the database.

The output column is ``VECTOR(n)`` and carries pgvector's HNSW index. An unfiltered search orders by distance
through that index. A filtered search follows a plan chosen by the share of rows the filter matches (learned from
earlier searches with the same filter, or counted up to a bound), as the in-process searches do:

- few matching rows: the exact distance to each of them (nearest ``n`` of exactly those); the same statement
  counts them up to the bound, and scores nothing when more match;
- more, on pgvector 0.8 or later: one iterative index scan with the filter (``hnsw.iterative_scan``, set for the
  search's transaction): the scan goes on until ``n`` rows pass the filter, so nothing is widened and no 1000-row
  cap applies; ``hnsw.ef_search`` as for the candidates below (the scan's first batch, where its hits come from
  when the filter matches near the query). Its ordering is relaxed (better recall than strict), so the ``n`` rows
  are sorted again here (not in an outer query over a materialized CTE as pgvector's README has it: PostgreSQL 17+
  plans that outer ``ORDER BY`` as already done); ``hnsw.max_scan_tuples`` bounds the scan (with the scan's memory
  in proportion); fewer than ``n`` rows at the bound, the exact scan. The statement numbers the rows as the scan
  gives them, so the share of them that matched is learned as the candidates' is;
- more, before 0.8 (or a composite key, see below): ANN candidates from the HNSW index (``hnsw.ef_search`` set for
  the search's transaction), joined to the source rows and checked against the filter; fewer than ``n`` left,
  widened once; then the exact scan.

pgvector before 0.8 has no iterative index scan: an index scan returns at most ``hnsw.ef_search`` rows (at most
1000), so candidates are taken in one scan, and a filter applied to that scan directly would return fewer rows.
The extension's version is read once per searcher. Rows are looked up by key one at a time (the exact scan: a
``LATERAL ... LIMIT 1`` subquery; the candidates and the iterative scan: hash and merge joins off for the
transaction, and for the iterative scan sorts too, so that the index scan feeds the join in order): the planner
would rather hash the whole outputs table, three times slower at 10,000 matching rows of 100,000, or every matching
source row for the candidates' check, or sort every matching row. A composite key is joined by its text, which has
no index: the matching rows are hashed, a join that loses the index scan's order, so those searches take candidates.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time

from typing import Any

import numpy as np
import sqlalchemy as sa

from superduper.base.query import Condition

# operator, index opclass, distance -> score (higher is nearer, as for the other searchers)
MEASURES = {
    'cosine': ('<=>', 'vector_cosine_ops', lambda d: 1.0 - d),
    'dot': ('<#>', 'vector_ip_ops', lambda d: -d),
    'l2': ('<->', 'vector_l2_ops', lambda d: -d * d),
}


class PgVector(sa.types.UserDefinedType):
    """pgvector's ``VECTOR(n)``: values travel as the float32 bytes every backend uses, in pgvector's text form."""

    cache_ok = True

    def __init__(self, dim: int):
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return f'VECTOR({self.dim})'

    def bind_processor(self, dialect: Any) -> Any:
        def process(value: Any) -> Any:
            if value is None:
                return None
            values = np.frombuffer(value, dtype=np.float32)
            return _vector_text(len(values)) % tuple(values.tolist())

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> Any:
            if value is None:
                return None
            return np.array(value[1:-1].split(','), dtype=np.float32).tobytes()

        return process


@functools.lru_cache(maxsize=16)
def _vector_text(dim: int) -> str:
    """pgvector's text form of ``dim`` values as a format: nine significant digits give back every float32 exactly,
    three times faster than each value's ``repr``."""
    return '[' + ','.join(['%.9g'] * dim) + ']'


#: pgvector's default ``hnsw.ef_search`` and its most (a scan returns at most that many rows)
EF_DEFAULT, EF_MAX = 40, 1000
MARGIN = 3  # candidates per expected match: the n nearest matches lie about n / share deep
#: the scan's ef per candidate asked for: pgvector's graph (m=16, ef_construction=64) ranks the rows beyond the
#: query's own cluster well only with a wide scan (recall@10 at 50% of 20,000 clustered rows: 0.89 at 2, 0.96 at 4;
#: benchmarks/pgvector_search.py)
BEAM = 4
#: the cost of a candidate's ef in the HNSW scan against a matching row's exact distance (about 25x, measured on
#: 100,000 rows of 384 dimensions), times BEAM and MARGIN: with ``m`` rows matching of ``total``, the exact scan costs
#: about ``m``, the candidates ``COST * n * total / m``; equal at ``m = sqrt(COST * n * total)``
COST = 300
#: pgvector's default ``hnsw.max_scan_tuples``, which its default ``hnsw.scan_mem_multiplier`` (1: ``work_mem``) holds
#: (a scan keeps about 200 bytes a tuple, whatever the dimension): a bound above it raises the multiplier alike
SCAN_DEFAULT = 20_000
#: tuples an iterative scan may visit per row it needs to pass the filter (``n / share``); about 2 visited a row
#: found at 1% of 3,000 clustered rows (tests/test_filtered_search.py)
SCAN_MARGIN = 4
ITERATIVE_SINCE = (0, 8)  # pgvector's first version with iterative index scans
TOTAL_TTL = 10.0  # seconds the table's size (for plans only) is kept
ESTIMATE = sa.text('SELECT GREATEST(reltuples, pg_stat_get_live_tuples(oid)) FROM pg_class WHERE oid = to_regclass(:name)')


class PgVectorSearcher:
    kind = 'pgvector'

    def __init__(self, db: Any, index: Any):
        self.db = db
        self.outputs = index.indexing_listener.outputs
        self.source = index.source
        self.dim = index.dimension(db)
        self.measure = index.measure
        self.vector_type = PgVector(self.dim)
        self._total: tuple[float, int] | None = None  # (when, rows) of the outputs table, estimated
        self._version: tuple[int, ...] | None = None  # the vector extension's

    def build(self) -> None:
        backend = self.db.databackend
        op, opclass, _ = MEASURES[self.measure]
        digest = hashlib.sha1(f'{self.outputs}_{opclass}'.encode()).hexdigest()[:16]
        name, outputs = backend.sql_name(f'_sd_hnsw_{digest}'), backend.sql_name(self.outputs)
        with backend.begin() as conn:
            backend.run_sql(conn, f'CREATE INDEX IF NOT EXISTS {name} ON {outputs} USING hnsw ({outputs} {opclass})')

    def __len__(self) -> int:
        return self.db.databackend.count(self.outputs)

    def search(self, vector: np.ndarray, n: int, where: Condition | None, primary_key: tuple[str, ...],
               plan: dict | None = None, share: float | None = None) -> list[tuple[Any, float]]:
        """The ``n`` nearest rows (matching ``where``), nearest first; the plan followed goes to ``plan``, with the
        ``share`` of rows the filter was seen to match (near the query), ``share`` being the last one seen."""
        plan = {} if plan is None else plan
        search = _Search(self, np.asarray(vector, dtype=np.float32), n, where, primary_key)
        with self.db.databackend.engine.connect() as conn, self.db.databackend.errors('vector search on', self.source):
            if where is None:
                return search.nearest(conn, plan)
            return search.filtered(conn, plan, share, self.rows(conn))

    def rows(self, conn: Any) -> int:
        """About how many rows the outputs table holds, for plans only: PostgreSQL's estimate (as of the last
        ``ANALYZE`` or index build) or its count of live rows (kept as rows are written), whichever is higher."""
        now = time.monotonic()
        if self._total is None or now - self._total[0] > TOTAL_TTL:
            rows = conn.execute(ESTIMATE, {'name': self.db.databackend.sql_name(self.outputs)}).scalar()
            self._total = (now, int(rows or 0))
        return self._total[1]

    def iterative(self, conn: Any) -> bool:
        """Whether the database's pgvector has iterative index scans (0.8 and later), read once."""
        if self._version is None:
            text = conn.exec_driver_sql("SELECT extversion FROM pg_extension WHERE extname = 'vector'").scalar()
            self._version = version(text)
        return self._version >= ITERATIVE_SINCE


def version(text: str | None) -> tuple[int, ...]:
    """``'0.8.7'`` as ``(0, 8, 7)``: the leading number of each part (``'0.8.0-dev'``: ``(0, 8, 0)``)."""
    parts = []
    for part in (text or '').split('.'):
        digits = part[:len(part) - len(part.lstrip('0123456789'))]
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class _Search:
    """One search: its statements, by the plan it follows."""

    def __init__(self, searcher: PgVectorSearcher, vector: np.ndarray, n: int, where: Condition | None,
                 primary_key: tuple[str, ...]):
        backend = searcher.db.databackend
        self.searcher, self.backend, self.n, self.where = searcher, backend, n, where
        self.out = backend.table(searcher.outputs)
        op, _, self.score = MEASURES[searcher.measure]
        query = sa.cast(sa.bindparam('q', vector.tobytes(), type_=searcher.vector_type), searcher.vector_type)
        self.column = self.out.c[searcher.outputs]
        self.distance = self.column.op(op, return_type=sa.Float)(query)
        self.src = backend.table(searcher.source) if where is not None else None
        if self.src is not None:
            columns = [self.src.c[k] for k in primary_key]
            self.key = columns[0] if len(columns) == 1 else backend.key_text(columns)
            self.composite = len(columns) > 1

    def nearest(self, conn: Any, plan: dict) -> list[tuple[Any, float]]:
        """Unfiltered: through the HNSW index, whose scan returns at most ``ef`` rows (all of them exactly for more
        than it can)."""
        stmt = sa.select(self.out.c._source, self.distance).where(self.column.is_not(None))
        if self.n > EF_MAX:
            plan.update(strategy='exact')
            return self._hits(conn.execute(stmt.order_by(self.distance + 0).limit(self.n)))
        ef = max(EF_DEFAULT, self.n)
        if ef > EF_DEFAULT:
            self._settings(conn, ef)
        plan.update(strategy='ann', ef=ef)
        return self._hits(conn.execute(stmt.order_by(self.distance).limit(self.n)))

    def filtered(self, conn: Any, plan: dict, share: float | None, total: int) -> list[tuple[Any, float]]:
        n, total = self.n, max(total, 1)
        limit = int(min(self.searcher.db.cfg.exact_filter_limit, max(math.sqrt(COST * n * total), 4 * n)))
        iterative = not self.composite and self.searcher.iterative(conn)
        # near the limit: count, the estimate may be off; a scan's share, from only n hits, is off more often, and
        # near the limit the two plans cost about the same: counted only well below it
        if share is None or share * total <= (0.5 if iterative else 1.2) * limit:
            hits, matching = self._exact(conn, limit)
            if matching <= limit:
                plan.update(strategy='exact over the matching ids', matching=matching, share=matching / total)
                return hits
            share = share or (limit + 1) / total  # a lower bound: the first search with this filter looks wide
        if iterative:
            return self._scanned_or_exact(conn, plan, share, total)
        k = min(total, EF_MAX, max(5 * n, math.ceil(MARGIN * n / share)))
        for tries in range(2):
            ef = min(EF_MAX, max(EF_DEFAULT, BEAM * k))
            hits = self._candidates(conn, k, ef)
            plan.update(strategy='ann, candidates checked against the filter', candidates=k, ef=ef, tries=tries + 1,
                        share=max(len(hits), 1) / k)
            if len(hits) >= n:
                return hits[:n]
            if k >= min(total, EF_MAX):  # no wider scan: the exact one says which match
                break
            k = min(total, EF_MAX, 4 * k)
        return self._every_match(conn, plan, total)

    def _scanned_or_exact(self, conn: Any, plan: dict, share: float, total: int) -> list[tuple[Any, float]]:
        """pgvector 0.8 on: one iterative scan with the filter, its ``ef`` the candidates' for this share (the
        first ``ef`` rows the graph ranks are the scan's first batch, and its hits come from them when the filter
        matches near the query); fewer than ``n`` rows at its bound, the exact scan. The share learned is the hits'
        among the rows the scan went through, as the candidates'."""
        n = self.n
        ef = min(EF_MAX, max(EF_DEFAULT, n, BEAM * math.ceil(MARGIN * n / share)))
        tuples = max(SCAN_DEFAULT, min(total, math.ceil(SCAN_MARGIN * n / share)))
        hits, scanned = self._iterative(conn, ef, tuples)
        plan.update(strategy='ann, iterative scan with the filter', ef=ef, max_scan_tuples=tuples, scanned=scanned,
                    share=max(len(hits), 1) / max(scanned, 1))
        if len(hits) >= n:
            return hits
        return self._every_match(conn, plan, total)  # the scan stopped at its bound: the filter's rows lie far

    def _every_match(self, conn: Any, plan: dict, total: int) -> list[tuple[Any, float]]:
        """The last resort of a filtered search: the exact scan over every matching row."""
        hits, matching = self._exact(conn, None)
        plan.update(strategy='exact over the matching ids', matching=matching, share=matching / total)
        return hits

    def _settings(self, conn: Any, ef: int, row_by_row: bool = True, **more: str) -> None:
        """The HNSW scan's ``ef``, with ``row_by_row`` joins through an index, and ``more`` settings, for this
        transaction only."""
        join = 'off' if row_by_row else 'on'
        settings = {'hnsw.ef_search': str(ef), 'enable_hashjoin': join, 'enable_mergejoin': join, **more}
        conn.execute(sa.select(*(sa.func.set_config(name, value, True) for name, value in settings.items())))

    def _exact(self, conn: Any, limit: int | None) -> tuple[list[tuple[Any, float]], int]:
        """The ``n`` nearest of the matching rows, and how many match, counted up to ``limit + 1``: with more,
        nothing is scored (a one-time filter on the count)."""
        matching = sa.select(self.key.label('k')).where(self.backend.compile_condition(self.src, self.where))
        if limit is not None:
            matching = matching.limit(limit + 1)
        m = matching.cte('sd_matching')
        counted = sa.select(sa.func.count().label('matching')).select_from(m).subquery('sd_count')
        # each matching row's vector looked up by its key (LIMIT 1: a subquery the planner keeps, not a join it
        # would make a hash of the whole outputs table)
        vector = sa.select(self.out.c._source, self.distance.label('d')).where(
            self.out.c._source == m.c.k, self.column.is_not(None)).limit(1).lateral('sd_vector')
        nearest = sa.select(vector.c._source, vector.c.d).select_from(m.join(vector, sa.true()))
        if limit is not None:
            nearest = nearest.where(counted.c.matching <= limit)
        nearest = nearest.order_by(vector.c.d).limit(self.n).lateral('sd_nearest')
        rows = conn.execute(sa.select(counted.c.matching, nearest.c._source, nearest.c.d).select_from(
            counted.outerjoin(nearest, sa.true())).order_by(nearest.c.d)).all()
        return self._hits([r[1:] for r in rows if r[1] is not None]), rows[0][0] if rows else 0  # (none: offline)

    def _iterative(self, conn: Any, ef: int, tuples: int) -> tuple[list[tuple[Any, float]], int]:
        """The first ``n`` rows matching the filter that one iterative (relaxed order) HNSW scan finds, nearest
        first, and how many rows the scan gave until then: it runs until ``n`` rows pass the filter or about
        ``tuples`` are visited."""
        self._settings(conn, ef, **{'hnsw.iterative_scan': 'relaxed_order', 'hnsw.max_scan_tuples': str(tuples),
                                    'hnsw.scan_mem_multiplier': str(min(1000.0, tuples / SCAN_DEFAULT)),
                                    'enable_sort': 'off'})
        # each row numbered as the scan gives it (the window streams: the LIMIT still ends the scan); the subquery
        # is planned without the LIMIT, so sorts off keep it on the index; ordered by distance, the join keeps the
        # scan outside (the planner takes the index's order as the distance's: no sort)
        ranked = sa.select(self.out.c._source, self.distance.label('d'), sa.func.row_number().over().label('seen')
                           ).where(self.column.is_not(None)).order_by(self.distance).subquery('sd_scan')
        rows = conn.execute(sa.select(ranked.c._source, ranked.c.d, ranked.c.seen).select_from(
            ranked.join(self.src, self.key == ranked.c._source)).where(
            self.backend.compile_condition(self.src, self.where)).order_by(ranked.c.d).limit(self.n)).all()
        # sorted here: the relaxed scan's order is not quite the distance's (pgvector's README sorts again in an
        # outer query over a materialized CTE, which PostgreSQL 17+ plans without a sort, taking the CTE's order)
        hits = sorted(((source, d) for source, d, _ in rows), key=lambda hit: hit[1])
        return self._hits(hits), max((seen for _, _, seen in rows), default=0)

    def _candidates(self, conn: Any, k: int, ef: int) -> list[tuple[Any, float]]:
        """Of the ``k`` nearest rows through the HNSW index, those matching the filter, nearest first (each looked
        up by its key; a composite key's text has no index: the matching rows hashed)."""
        self._settings(conn, ef, row_by_row=not self.composite)
        candidates = sa.select(self.out.c._source, self.distance.label('d')).where(self.column.is_not(None)).order_by(
            self.distance).limit(k).subquery('sd_candidates')
        stmt = sa.select(candidates.c._source, candidates.c.d).select_from(
            candidates.join(self.src, self.key == candidates.c._source)).where(
            self.backend.compile_condition(self.src, self.where)).order_by(candidates.c.d)
        return self._hits(conn.execute(stmt))

    def _hits(self, rows: Any) -> list[tuple[Any, float]]:
        return [(source, self.score(float(d))) for source, d in rows]
