"""Storage kinds (``FieldType.storage``) as Arrow types, and values both ways: Python values superduper encoded into
Arrow arrays for writes, Arrow columns back into the Python values the runtime decodes."""

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


def arrow_type(storage: str) -> pa.DataType:
    return KINDS[storage]


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
    if storage == 'json':
        values = [None if v is None else json.dumps(v) for v in values]
    elif storage == 'uuid':
        values = [None if v is None else str(v) for v in values]
    return pa.array(values, type=dtype, from_pandas=False)


def reader(storage: str | None) -> Callable[[list], list] | None:
    """How a column of stored values reads back (``None``: as Arrow gives them)."""
    if storage == 'json':
        return lambda values: [None if v is None else json.loads(v) for v in values]
    if storage == 'uuid':
        return lambda values: [None if v is None else uuid.UUID(v) for v in values]
    return None


def rows_of(batch: pa.RecordBatch, readers: list[Any]) -> list[tuple]:
    """A record batch as row tuples, each column read back its own way."""
    columns = []
    for column, read in zip(batch.columns, readers):
        values = column.to_pylist()
        columns.append(read(values) if read is not None else values)
    return list(zip(*columns))
