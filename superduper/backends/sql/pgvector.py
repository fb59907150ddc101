"""Search pushed down to PostgreSQL with pgvector: the vectors never leave the database.

The output column is ``VECTOR(n)`` and carries pgvector's HNSW index. An unfiltered search orders by distance
through that index; a filtered search orders by ``distance + 0``, which the planner cannot serve from the index,
so PostgreSQL scans the matching rows exactly and always returns ``n`` rows when ``n`` match (pgvector's HNSW
scan with a filter returns fewer before 0.8).
"""

from __future__ import annotations

import hashlib

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
            return '[' + ','.join(map(str, np.frombuffer(value, dtype=np.float32).tolist())) + ']'

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> Any:
            if value is None:
                return None
            return np.array(value[1:-1].split(','), dtype=np.float32).tobytes()

        return process


class PgVectorSearcher:
    kind = 'pgvector'

    def __init__(self, db: Any, index: Any):
        self.db = db
        self.outputs = index.indexing_listener.outputs
        self.source = index.source
        self.dim = index.dimension(db)
        self.measure = index.measure
        self.vector_type = PgVector(self.dim)

    def build(self) -> None:
        backend = self.db.databackend
        op, opclass, _ = MEASURES[self.measure]
        digest = hashlib.sha1(f'{self.outputs}_{opclass}'.encode()).hexdigest()[:16]
        name, outputs = backend.sql_name(f'_sd_hnsw_{digest}'), backend.sql_name(self.outputs)
        with backend.begin() as conn:
            backend.run_sql(conn, f'CREATE INDEX IF NOT EXISTS {name} ON {outputs} USING hnsw ({outputs} {opclass})')

    def __len__(self) -> int:
        return self.db.databackend.count(self.outputs)

    def search(self, vector: np.ndarray, n: int, where: Condition | None,
               primary_key: tuple[str, ...]) -> list[tuple[Any, float]]:
        backend = self.db.databackend
        out = backend.table(self.outputs)
        op, _, score = MEASURES[self.measure]
        query = sa.cast(sa.bindparam('q', np.asarray(vector, dtype=np.float32).tobytes(), type_=self.vector_type),
                        self.vector_type)
        distance = out.c[self.outputs].op(op, return_type=sa.Float)(query)
        stmt = sa.select(out.c._source, distance).where(out.c[self.outputs].is_not(None))
        if where is None:
            stmt = stmt.order_by(distance)
        else:
            src = backend.table(self.source)
            key = src.c[primary_key[0]] if len(primary_key) == 1 else backend.key_text([src.c[k] for k in primary_key])
            stmt = stmt.select_from(out.join(src, key == out.c._source))
            stmt = stmt.where(backend.compile_condition(src, where)).order_by(distance + 0)
        with backend.engine.connect() as conn, backend.errors('vector search on', self.source):
            rows = conn.execute(stmt.limit(n)).all()
        return [(source, score(float(d))) for source, d in rows]
