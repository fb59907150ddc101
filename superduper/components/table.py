"""``Table``: a table created and typed by superduper, with a string ``id`` primary key filled when missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from superduper.base.exceptions import ComponentError
from superduper.components.component import Component
from superduper.components.schema import Schema


@dataclass(eq=False)
class Table(Component):
    """``Table('docs', fields={'txt': 'str', 'v': 'vector[float32:384]'})`` or ``Table('docs', schema=Schema(...))``."""

    type_id: ClassVar[str] = 'Table'

    fields: dict[str, Any] | None = None
    schema: Schema | None = None
    primary_id: str = 'id'
    folds: bool = True  # a '_fold' column ('train' or 'valid') assigned on insert, for training and validation
    resolved_schema: Schema = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.fields is None) == (self.schema is None):
            raise ComponentError(f'Table {self.identifier!r}: give exactly one of fields= or schema=')
        declared = dict(self.fields if self.fields is not None else self.schema.fields)
        declared = {self.primary_id: declared.pop(self.primary_id, 'str'), **declared}
        if self.folds:
            declared.setdefault('_fold', 'str')
        self.resolved_schema = Schema(self.identifier, fields=declared)

    def on_create(self, db: Any) -> None:
        db.databackend.create_table(self.identifier, self.resolved_schema.types, db.databackend.primary_key_of(self))
        db.forget_table(self.identifier)

    def on_remove(self, db: Any) -> None:
        if not db.metadata.versions(self.type_id, self.identifier):  # the last version: the data goes too
            db.databackend.drop_table(self.identifier)
        db.forget_table(self.identifier)
