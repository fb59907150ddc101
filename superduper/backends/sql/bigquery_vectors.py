"""Vectors stored and searched natively in BigQuery: a float32 ``vector`` field is an ``ARRAY<FLOAT64>`` column,
and a vector index over one is searched by BigQuery with ``COSINE_DISTANCE`` or ``EUCLIDEAN_DISTANCE`` in one
query ordered by the distance (``superduper.backends.sql.vector_pushdown``).

BigQuery stores no ``NULL`` array: a missing vector is the empty array (never a valid vector), read back as
``None``, and ``IS NULL`` on the column is ``ARRAY_LENGTH(column) = 0``.

GoogleSQL has no inner-product function outside ``VECTOR_SEARCH``: ``dot`` is written with Euclidean distances
(``v·q = (|v|² + |q|² - |v - q|²) / 2``, the norms as distances from the zero vector), exact to float64 rounding.

No ``VECTOR_SEARCH``: over a table with a vector index it answers approximately and filters after picking its
candidates (fewer than ``n`` rows can come back under a filter), and without one it is the same exact scan as the
``ORDER BY`` here, which takes the source table's filter as a join like every other engine's search.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.sql import operators

from superduper.backends.sql.vector_pushdown import EmptyArrayVector, SQLVectorSearcher, vector_values

TYPE = 'ARRAY<FLOAT64>'


class BqVector(EmptyArrayVector):
    """``ARRAY<FLOAT64>``: values travel as the float32 bytes every backend uses; ``None`` is the empty array."""

    type_name = TYPE

    def literal_processor(self, dialect: Any) -> Any:
        def process(value: Any) -> str:
            values = [] if value is None else vector_values(value) if isinstance(value, bytes) else list(value)
            return '[' + ', '.join(repr(float(v)) for v in values) + ']' if values else f'CAST([] AS {TYPE})'

        return process

    class comparator_factory(sa.types.UserDefinedType.Comparator):
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if other == (None,) and op in (operators.is_, operators.eq):
                return sa.func.coalesce(sa.func.array_length(self.expr), 0) == 0
            if other == (None,) and op in (operators.is_not, operators.ne):
                return sa.func.array_length(self.expr) > 0
            return super().operate(op, *other, **kwargs)


def _squared(x: Any) -> Any:
    return sa.func.pow(x, 2)


class BigQueryVectorSearcher(SQLVectorSearcher):
    kind = 'bigquery'
    vector_type = BqVector  # its comparator makes ``IS NOT NULL`` ``ARRAY_LENGTH(...) > 0``

    def __init__(self, db: Any, index: Any):
        super().__init__(db, index)
        zero = sa.literal(b'\x00' * 4 * self.dim, BqVector(self.dim))
        # a zero vector has no direction (SAFE. gives NULL, not an error): score 0, as in-process
        self.distances = {
            'cosine': lambda v, q: sa.func.coalesce(sa.func.SAFE.COSINE_DISTANCE(v, q), 1.0),
            'dot': lambda v, q: (_squared(sa.func.EUCLIDEAN_DISTANCE(v, q)) - _squared(sa.func.EUCLIDEAN_DISTANCE(v, zero))
                                 - _squared(sa.func.EUCLIDEAN_DISTANCE(q, zero))) * 0.5,
            'l2': lambda v, q: sa.func.EUCLIDEAN_DISTANCE(v, q),
        }
        self.scores = {'cosine': lambda d: 1.0 - d, 'dot': lambda d: -d, 'l2': lambda d: -d * d}

    def query_vector(self, vector: np.ndarray) -> Any:
        return sa.bindparam('q', vector.tobytes(), type_=BqVector(self.dim))  # an ARRAY<FLOAT64> parameter
