"""Rows as DataFrames: a batch of ``Document``s as a pandas or polars DataFrame (``Cursor.to_pandas()`` and kin).

pandas and polars are optional: the caller imports one with ``require`` when a frame is first asked for, and a
missing one raises ``MissingDependency`` naming the extra that installs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from superduper.base.exceptions import MissingDependency

if TYPE_CHECKING:
    import pandas
    import polars

Rows = Sequence[Mapping[str, Any]]


def require(package: str, wanted_by: str) -> Any:
    """The imported ``package`` (``'pandas'`` or ``'polars'``, each an extra of its own name), or
    ``MissingDependency`` with the one-line install hint."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise MissingDependency(
            f"{wanted_by} needs the {package} package, which is not installed: pip install 'superduper[{package}]'"
        ) from e


def column_names(rows: Rows, known: Sequence[str] | None) -> list[str]:
    """The ``known`` columns first (the select's order), then any other keys in the order rows first have them
    (schemaless tables)."""
    names = dict.fromkeys(known or ())
    for row in rows:
        for key in row:
            names.setdefault(key)
    return list(names)


def pandas_frame(pd: Any, rows: Rows, known: Sequence[str] | None, start: int = 0) -> 'pandas.DataFrame':
    """``rows`` as a pandas DataFrame indexed from ``start``; values as they are (vectors stay numpy arrays in an
    object column), a key a row lacks as missing."""
    names = column_names(rows, known)
    if not rows:
        return pd.DataFrame(columns=names)
    data = {name: [row.get(name) for row in rows] for name in names}
    return pd.DataFrame(data, columns=names, index=pd.RangeIndex(start, start + len(rows)))


def polars_frame(pl: Any, rows: Rows, known: Sequence[str] | None) -> 'polars.DataFrame':
    """``rows`` as a polars DataFrame, each column's type inferred by polars (vectors as array or list columns)."""
    names = column_names(rows, known)
    return pl.DataFrame([_polars_series(pl, name, [row.get(name) for row in rows]) for name in names])


def _polars_series(pl: Any, name: str, values: list) -> 'polars.Series':
    """A column polars types itself; failing that, with numpy arrays as lists; failing that, of Python objects."""
    failures = (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError)
    try:
        return pl.Series(name, values)
    except failures:
        pass
    try:  # polars infers an array column from numpy arrays only when no value is missing; from lists it always can
        return pl.Series(name, [_as_list(v) for v in values])
    except failures:  # mixed or unknown types: kept as they are
        return pl.Series(name, values, dtype=pl.Object)


def _as_list(value: Any) -> Any:
    tolist = getattr(value, 'tolist', None)
    return tolist() if tolist is not None and getattr(value, 'ndim', 0) > 0 else value
