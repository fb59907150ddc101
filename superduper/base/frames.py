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


# ---- from columns (a select read column by column: Arrow arrays where the backend gives them, else lists) ----------
def _is_arrow(column: Any) -> bool:
    return type(column).__module__.startswith('pyarrow')


def _values(pieces: Sequence[Any]) -> list:
    values: list = []
    for piece in pieces:
        values.extend(piece.to_pylist() if _is_arrow(piece) else piece)
    return values


def _column_pieces(parts: Sequence[Sequence[Any]], i: int) -> list:
    return [part[i] for part in parts]


def pandas_from_columns(pd: Any, names: Sequence[str], parts: Sequence[Sequence[Any]],
                        start: int = 0) -> 'pandas.DataFrame':
    """Batches of columns (in ``names`` order) as one pandas DataFrame indexed from ``start``: the Arrow columns
    converted together by Arrow, as an engine's own ``to_pandas`` would, the list columns as they are."""
    if not parts:
        return pd.DataFrame(columns=list(names))
    import pyarrow as pa

    arrow, lists = {}, {}
    for i, name in enumerate(names):
        pieces = _column_pieces(parts, i)
        if all(_is_arrow(p) for p in pieces):
            arrow[name] = pa.chunked_array(pieces)
        else:
            lists[name] = _values(pieces)
    frame = pa.table(arrow).to_pandas() if arrow else pd.DataFrame(index=pd.RangeIndex(len(next(iter(lists.values())))))
    for name, values in lists.items():
        frame[name] = values
    frame = frame[list(names)]
    frame.index = pd.RangeIndex(start, start + len(frame))
    return frame


def polars_from_columns(pl: Any, names: Sequence[str], parts: Sequence[Sequence[Any]]) -> 'polars.DataFrame':
    """Batches of columns (in ``names`` order) as one polars DataFrame: Arrow columns taken by polars as they are,
    list columns typed as ``polars_frame`` types them."""
    if not parts:
        return pl.DataFrame({name: [] for name in names})
    import pyarrow as pa

    series = []
    for i, name in enumerate(names):
        pieces = _column_pieces(parts, i)
        if all(_is_arrow(p) for p in pieces):
            series.append(pl.from_arrow(pa.chunked_array(pieces)).alias(name))
        else:
            series.append(_polars_series(pl, name, _values(pieces)))
    return pl.DataFrame(series)
