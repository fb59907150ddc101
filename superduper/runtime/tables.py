"""What queries need to know of each table: its fields' types and its primary key, read once per table and forgotten
when components change (a table may have been declared or re-declared by another process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from superduper.base.exceptions import InvalidValue
from superduper.base.query import And, Compare, Condition, Not, Or
from superduper.components.datatype import Scalar
from superduper.components.schema import OpenSchema, Schema


@dataclass
class TableInfo:
    """What a query needs to know about a table: its fields' types and its primary key."""

    name: str
    schema: Schema
    primary_key: tuple[str, ...]
    auto_id: bool  # superduper fills a missing key (a string id, or the database's own kind such as an ObjectId)


class Tables:
    """The ``TableInfo`` of every table queried so far: from its ``Table`` declaration where there is one, else
    from the database."""

    def __init__(self, databackend: Any, metadata: Any, load_record: Callable[[dict], Any]):
        self.databackend = databackend
        self.metadata = metadata
        self._load_record = load_record
        self._known: dict[str, TableInfo] = {}

    def get(self, name: str) -> TableInfo:
        info = self._known.get(name)
        if info is None:
            info = self._known[name] = self._describe(name)
        return info

    def _describe(self, name: str) -> TableInfo:
        record = self.metadata.get('Table', name)
        if record is not None:
            schema, key = self.databackend.declared_schema(self._load_record(record))
            return TableInfo(name, schema, (key,), auto_id=True)
        kinds, primary_key = self.databackend.describe(name)
        # a document database gives every new row a key; a SQL table made elsewhere keeps its own keys
        schemaless = self.databackend.schemaless
        return TableInfo(name, (OpenSchema if schemaless else Schema)(name, fields=kinds), primary_key,
                         auto_id=schemaless)

    def forget(self, name: str) -> None:
        self._known.pop(name, None)
        self.databackend.forget(name)

    def clear(self) -> None:
        self._known.clear()


def encode_condition(cond: Condition, info: TableInfo) -> Condition:
    """Check and convert filter values against their field's type (a string compared to an int field is an error)."""
    if isinstance(cond, Compare):
        ftype = info.schema.types.get(cond.field)
        if not isinstance(ftype, Scalar) or cond.value is None:
            return cond
        values = list(cond.value) if cond.op == 'in' else [cond.value]
        try:
            encoded = info.schema.encode_columns(info.name, [cond.field], [values], None)[0]
        except InvalidValue:
            raise InvalidValue(f'filter on table {info.name!r}, field {cond.field!r}: expected {ftype.expected}, '
                               f'got {cond.value!r}') from None
        return Compare(cond.field, cond.op, tuple(encoded) if cond.op == 'in' else encoded[0])
    if isinstance(cond, (And, Or)):
        return type(cond)(tuple(encode_condition(c, info) for c in cond.parts))
    if isinstance(cond, Not):
        return Not(encode_condition(cond.part, info))
    return cond
