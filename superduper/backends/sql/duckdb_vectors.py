"""Vectors stored and searched natively in DuckDB: a float32 ``vector`` field is a fixed-size ``FLOAT[n]`` array
column, and a vector index over one is searched by DuckDB with ``array_cosine_distance``,
``array_negative_inner_product`` or ``array_distance`` in one query (``superduper.backends.sql.vector_pushdown``).

No ANN index: DuckDB's HNSW index lives in the ``vss`` extension, which is downloaded by ``INSTALL vss`` (nothing
here downloads at run time, and it is not installed on these machines); its index persists in a database file only
behind an experimental flag, and it answers ``ORDER BY distance LIMIT n`` before a filter, so a filtered search could
return fewer than ``n`` rows. The exact scan is vectorised in the engine, with the filter applied first.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from superduper.backends.sql.vector_pushdown import SQLVectorSearcher, vector_bytes, vector_values


class DuckVector(sa.types.UserDefinedType):
    """``FLOAT[n]``: values travel as the float32 bytes every backend uses."""

    cache_ok = True

    def __init__(self, dim: int):
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return f'FLOAT[{self.dim}]'

    def bind_processor(self, dialect: Any) -> Any:
        def process(value: Any) -> Any:
            return None if value is None else vector_values(value)

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> Any:
            return None if value is None else vector_bytes(value)

        return process


def _zero_is_orthogonal(distance: Any) -> Any:
    """A zero vector has no direction (NaN): score 0, as the in-process searchers give it."""
    return sa.case((sa.func.isnan(distance), 1.0), else_=distance)


#: the expression ordering nearest first, and its value as a score (higher is nearer, as in-process)
DISTANCES = {
    'cosine': lambda v, q: _zero_is_orthogonal(sa.func.array_cosine_distance(v, q)),
    'dot': lambda v, q: sa.func.array_negative_inner_product(v, q),
    'l2': lambda v, q: sa.func.array_distance(v, q),
}
SCORES = {'cosine': lambda d: 1.0 - d, 'dot': lambda d: -d, 'l2': lambda d: -d * d}


class DuckDBVectorSearcher(SQLVectorSearcher):
    kind = 'duckdb'
    distances = DISTANCES
    scores = SCORES
    vector_type = DuckVector
