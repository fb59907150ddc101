"""A batch of rows as a pyarrow table, for the engines that read Arrow in place (DuckDB scans it, ClickHouse takes
it as its ``Arrow`` input format): one conversion in C per column instead of one bound parameter per value.

Only where the result is the same as binding each value: every value of a column is of the Python types that
column's Arrow type takes as they are (``None`` included), datetimes are naive, and pyarrow converts it without
error; otherwise ``None``, and the backend binds the values as before."""

from __future__ import annotations

import datetime
from typing import Any, Sequence

#: the Python types each Arrow type here takes unchanged (an int in a float64 column only where exact)
PYTHON_TYPES: dict[str, frozenset] = {
    'bool_': frozenset({bool, type(None)}),
    'int64': frozenset({int, type(None)}),
    'float64': frozenset({float, int, type(None)}),
    'string': frozenset({str, type(None)}),
    'binary': frozenset({bytes, type(None)}),
    'timestamp': frozenset({datetime.datetime, type(None)}),
}


def arrow_table(keys: Sequence[str], columns: list[list], kinds: Sequence[str | None]) -> Any | None:
    """The columns (values as the driver would be given them) as a pyarrow table of the ``kinds`` (keys of
    ``PYTHON_TYPES``), or ``None`` where that would not store the same values, or pyarrow is not installed."""
    if not columns or not columns[0] or None in kinds:
        return None
    try:
        import pyarrow as pa
    except ImportError:
        return None
    arrays = {}
    for key, values, kind in zip(keys, columns, kinds):
        if not set(map(type, values)) <= PYTHON_TYPES[kind]:
            return None
        if kind == 'timestamp' and any(v is not None and v.tzinfo is not None for v in values):
            return None  # databases differ on the zone an aware datetime is stored in
        arrow_type = pa.timestamp('us') if kind == 'timestamp' else getattr(pa, kind)()
        try:
            arrays[key] = pa.array(values, arrow_type)
        except (ValueError, TypeError, OverflowError):  # an int a double cannot hold exactly, a lone surrogate...
            return None
    return pa.table(arrays)
