"""What a reflected column holds: its storage kind, and how key columns' text renderings read back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa


def convert_columns(batch: list, convert: list) -> list:
    columns = list(zip(*batch))
    for i, proc in convert:
        columns[i] = list(map(proc, columns[i]))
    return list(zip(*columns))


def storage_of(sa_type: Any) -> str:
    """The storage kind of a reflected column type; ``'any'`` passes values through unchecked."""
    if isinstance(sa_type, sa.Boolean):
        return 'bool'
    if isinstance(sa_type, sa.Uuid):
        return 'uuid'
    if isinstance(sa_type, sa.Integer):
        return 'int'
    if isinstance(sa_type, sa.Float):
        return 'float'
    if isinstance(sa_type, sa.JSON):
        return 'json'
    if isinstance(sa_type, (sa.String, sa.Enum)):
        return 'str'
    if isinstance(sa_type, sa.LargeBinary) or isinstance(sa_type, sa.types._Binary):
        return 'bytes'
    if isinstance(sa_type, sa.DateTime):
        return 'datetime'
    return 'any'


def key_parser(sa_type: Any) -> Any:
    """Turns one key column's text rendering (or JSON value, in a composite key) back into its Python value."""
    try:
        python_type = sa_type.python_type
    except NotImplementedError:
        return lambda v: v
    if python_type is int:
        return int
    if python_type is uuid.UUID:
        as_uuid = getattr(sa_type, 'as_uuid', True)
        return (lambda v: uuid.UUID(str(v))) if as_uuid else str
    if python_type is str:
        return str
    if python_type in (float, bool):
        return lambda v: python_type(json.loads(v) if isinstance(v, str) else v)
    import datetime
    import decimal

    if python_type is datetime.datetime:
        return lambda v: datetime.datetime.fromisoformat(str(v).replace('T', ' '))
    if python_type is datetime.date:
        return lambda v: datetime.date.fromisoformat(str(v))
    if python_type is decimal.Decimal:
        return lambda v: decimal.Decimal(str(v))
    return lambda v: v
