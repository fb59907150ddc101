"""Vectors stored and searched natively in ClickHouse (chDB in process, or a server): a float32 ``vector`` field is
an ``Array(Float32)`` column, and a vector index over one is searched by ClickHouse with ``cosineDistance``,
``dotProduct`` or ``L2SquaredDistance`` in one query (``superduper.backends.sql.vector_pushdown``).

ClickHouse has no ``Nullable(Array(...))``: a missing vector is stored as the empty array (never a valid vector,
which has at least one value), read back as ``None``, and ``IS NULL`` on the column is ``empty(column)``.

No ANN index: ClickHouse's ``vector_similarity`` index (HNSW) is not used. The searches must be exact under filters
and return ``n`` rows whenever ``n`` rows match, and the index answers approximately, filtering after it has picked
its candidates (fewer than ``n`` rows can come back); every read here runs with ``final = 1`` on
``ReplacingMergeTree`` tables (where the index is not used) and updates are mutations that rebuild it part by part.
The exact scan runs vectorised in the engine, next to the data, with the filter applied first.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import operators

from superduper.backends.sql.vector_pushdown import EmptyArrayVector, SQLVectorSearcher

TYPE = 'Array(Float32)'


class ChVector(EmptyArrayVector):
    """``Array(Float32)``: values travel as the float32 bytes every backend uses; ``None`` is the empty array."""

    type_name = TYPE

    class comparator_factory(sa.types.UserDefinedType.Comparator):
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if other == (None,) and op in (operators.is_, operators.eq):
                return sa.func.empty(self.expr)
            if other == (None,) and op in (operators.is_not, operators.ne):
                return sa.func.notEmpty(self.expr)
            return super().operate(op, *other, **kwargs)


#: the expression ordering nearest first, and its value as a score (higher is nearer, as in-process)
DISTANCES = {
    'cosine': lambda v, q: sa.func.ifNotFinite(sa.func.cosineDistance(v, q), 1.0),  # a zero vector: score 0
    'dot': lambda v, q: -sa.func.dotProduct(v, q),
    'l2': lambda v, q: sa.func.L2SquaredDistance(v, q),
}
SCORES = {'cosine': lambda d: 1.0 - d, 'dot': lambda d: -d, 'l2': lambda d: -d}


class ClickHouseVectorSearcher(SQLVectorSearcher):
    kind = 'clickhouse'
    distances = DISTANCES
    scores = SCORES
    vector_type = ChVector  # its comparator makes ``IS NOT NULL`` ``notEmpty``
