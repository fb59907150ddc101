"""Vector search run by the database itself over an outputs table whose vectors are stored natively: the statement
every engine shares (its distance function is the engine's own, in its module: ``clickhouse_vectors.py``,
``duckdb_vectors.py``).

One query per search: the ``n`` outputs nearest the query vector, joined to the source table and filtered there
with the same where-clause code the backend uses for selects when the search is filtered. The scan is exact, so a
filtered search always returns ``n`` rows when ``n`` rows match. Ties are broken by the source key, so that equal
distances come back in one order every time.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import sqlalchemy as sa

from superduper.base.query import Condition


class SQLVectorSearcher:
    """The interface of ``superduper.backends.sql.pgvector.PgVectorSearcher``: ``build``, ``len``, ``search``.

    A subclass gives ``kind``, the column's ``vector_type``, and per measure its ``distances`` (the expression that
    orders nearest first, ascending) and ``scores`` (that value as the score the in-process searchers give, higher
    is nearer: cosine similarity, inner product, negated squared L2 distance)."""

    kind = 'sql'
    vector_type: Callable[[int], Any]  # the column type (of a dimension)
    distances: dict[str, Callable[[Any, Any], Any]] = {}
    scores: dict[str, Callable[[float], float]] = {}

    def __init__(self, db: Any, index: Any):
        self.db = db
        self.outputs = index.indexing_listener.outputs
        self.source = index.source
        self.dim = index.dimension(db)
        self.measure = index.measure

    def build(self) -> None:
        """Nothing to build: the search scans the outputs table (see the engine module for why no ANN index)."""

    def __len__(self) -> int:
        return self.db.databackend.count(self.outputs)

    def query_vector(self, vector: np.ndarray) -> Any:
        """The query vector as an expression of the column's type."""
        vector_type = self.vector_type(self.dim)
        return sa.cast(sa.bindparam('q', vector.tobytes(), type_=vector_type), vector_type)

    def present(self, column: Any) -> Any:
        """Rows that hold a vector."""
        return column.is_not(None)

    def search(self, vector: np.ndarray, n: int, where: Condition | None, primary_key: tuple[str, ...],
               plan: dict | None = None, share: float | None = None) -> list[tuple[Any, float]]:
        """The ``n`` nearest rows (matching ``where``), one exact query whatever the share of rows matching (``plan``
        and ``share`` are for searchers that plan: ``PgVectorSearcher``)."""
        backend = self.db.databackend
        out = backend.table(self.outputs)
        column = out.c[self.outputs]
        distance = self.distances[self.measure](column, self.query_vector(np.asarray(vector, dtype=np.float32)))
        distance = distance.label('_sd_distance')
        stmt = sa.select(out.c._source, distance).where(self.present(column))
        if where is not None:
            src = backend.table(self.source)
            key = src.c[primary_key[0]] if len(primary_key) == 1 else backend.key_text([src.c[k] for k in primary_key])
            stmt = stmt.select_from(out.join(src, key == out.c._source))
            stmt = stmt.where(backend.compile_condition(src, where))
        stmt = stmt.order_by(distance, out.c._source).limit(n)
        with backend.engine.connect() as conn, backend.errors('vector search on', self.source):
            rows = conn.execute(stmt).all()
        score = self.scores[self.measure]
        return [(source, score(float(d))) for source, d in rows]


def vector_bytes(values: Any) -> bytes:
    """A vector read from the database as the float32 bytes every backend's ``vector`` field decodes."""
    return np.asarray(values, dtype=np.float32).tobytes()


def vector_values(data: bytes) -> list[float]:
    """The float32 bytes of an encoded vector as numbers a driver binds (each float32 exactly, as a double)."""
    return np.frombuffer(data, dtype=np.float32).tolist()


class EmptyArrayVector(sa.types.UserDefinedType):
    """A float array column (``type_name``) holding a vector: values travel as the float32 bytes every backend
    uses; ``None`` is stored as the empty array (ClickHouse and BigQuery have no NULL array)."""

    cache_ok = True
    type_name = ''

    def __init__(self, dim: int):
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return self.type_name

    def bind_processor(self, dialect: Any) -> Any:
        def process(value: Any) -> Any:
            return [] if value is None else vector_values(value)

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> Any:
            return vector_bytes(value) if value is not None and len(value) else None

        return process
