"""Field types as Arrow types, and values both ways: Python values superduper encoded into Arrow arrays for writes,
Arrow columns back into the Python values the runtime decodes.

Each storage kind (``FieldType.storage``) has its Arrow type; vectors of real or integer numbers are stored as Arrow
fixed-size lists (``vector[float32:384]`` is ``fixed_size_list<float>[384]``), so other tools read embeddings as
arrays, not bytes. The runtime encodes a vector into its bytes; they become the list's values on the way in, and
the list's values become the bytes again on the way out."""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

import pyarrow as pa

KINDS: dict[str, pa.DataType] = {
    'str': pa.string(),
    'int': pa.int64(),
    'float': pa.float64(),
    'bool': pa.bool_(),
    'bytes': pa.binary(),
    'json': pa.string(),  # JSON text
    'datetime': pa.timestamp('us'),
    'uuid': pa.string(),
    'any': pa.string(),
}


def arrow_type(ftype: Any) -> pa.DataType:
    """The Arrow type storing a field of type ``ftype`` (a ``FieldType``)."""
    from superduper.components.datatype import Vector

    if isinstance(ftype, Vector) and ftype.np_dtype.kind in 'fiu':
        return pa.list_(pa.from_numpy_dtype(ftype.np_dtype), ftype.dim)
    return KINDS[ftype.storage]


def storage_of(dtype: pa.DataType) -> str:
    """The storage kind of a column another program wrote; ``'any'`` passes its values through unchecked."""
    if pa.types.is_boolean(dtype):
        return 'bool'
    if pa.types.is_integer(dtype):
        return 'int'
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return 'float'
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return 'str'
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_fixed_size_binary(dtype):
        return 'bytes'
    if pa.types.is_timestamp(dtype):
        return 'datetime'
    return 'any'


def to_array(values: list, dtype: pa.DataType, storage: str | None) -> pa.Array:
    """Encoded values as an Arrow array of the column's type."""
    if _is_list(dtype) and storage == 'bytes':  # Delta keeps a fixed-size list as a list
        return _vectors(values, dtype)
    if storage == 'json':
        values = [None if v is None else json.dumps(v) for v in values]
    elif storage == 'uuid':
        values = [None if v is None else str(v) for v in values]
    return pa.array(values, type=dtype, from_pandas=False)


def _vectors(values: list, dtype: pa.DataType) -> pa.Array:
    """Vectors encoded as bytes, as a list array of ``dtype`` (a missing vector a null)."""
    import numpy

    item = numpy.dtype(dtype.value_type.to_pandas_dtype())
    present = [v for v in values if v is not None]
    if not present:
        return pa.nulls(len(values), dtype)
    size = len(present[0]) // item.itemsize
    flat = numpy.frombuffer(b''.join(v if v is not None else bytes(size * item.itemsize) for v in values), dtype=item)
    mask = pa.array([v is None for v in values]) if len(present) < len(values) else None
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), size, mask=mask).cast(dtype)


def reader(storage: str | None, dtype: pa.DataType | None = None) -> Callable[[Any], list] | None:
    """How a column of stored values (an Arrow array) reads back (``None``: as Arrow gives them)."""
    if dtype is not None and _is_list(dtype) and storage == 'bytes':
        return _vector_bytes
    if storage == 'json':
        return lambda column: [None if v is None else json.loads(v) for v in column.to_pylist()]
    if storage == 'uuid':
        return lambda column: [None if v is None else uuid.UUID(v) for v in column.to_pylist()]
    return None


def _is_list(dtype: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(dtype) or pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def _vector_bytes(column: Any) -> list:
    """A column of vectors (fixed-size lists, or lists as an engine may return them) as each row's bytes, as the
    runtime stores vectors (``None`` for a null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    present = len(column) - column.null_count
    if not present:
        return [None] * len(column)
    rows = iter(column.flatten().to_numpy(zero_copy_only=False).reshape(present, -1))
    if not column.null_count:
        return [row.tobytes() for row in rows]
    return [None if null else next(rows).tobytes() for null in column.is_null().to_pylist()]


def rows_of(batch: pa.RecordBatch, readers: list[Any]) -> list[tuple]:
    """A record batch as row tuples, each column read back its own way."""
    columns = [read(column) if read is not None else column.to_pylist()
               for column, read in zip(batch.columns, readers)]
    return list(zip(*columns))
