"""``Listener``: keeps a model's outputs on the rows a query selects, in a table of their own.

Outputs go to ``_outputs__<identifier>__<uuid8>`` (one table per listener version), keyed by the source row's
primary key in ``_source``, with the output in a column of the same name as the table, so that a downstream
listener can take ``key=upstream.outputs`` on ``db[upstream.outputs].select()``.

With ``flatten=True`` the model returns a list per source row and each item is a row of its own (a *chunk*): the
outputs table is keyed by ``_chunk_id`` (``<source key text>#<position>``), with ``_source`` and ``_position`` beside
the item; a source's chunks are replaced together whenever it is computed again, and removed with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from superduper.base.exceptions import ComponentError
from superduper.base.query import Query
from superduper.components.component import Component
from superduper.components.inputs import input_maker


#: the longest table name every supported database takes, in bytes (PostgreSQL: 63; MySQL: 64 characters)
NAME_LIMIT = 63


def outputs_table(predict_id: str) -> str:
    """``_outputs__<predict_id>``, shortened deterministically (with a hash of the whole name) where it would be too
    long for the database: every client derives the same name from the listener's identifier and uuid."""
    name = f'_outputs__{predict_id}'
    if len(name.encode()) <= NAME_LIMIT:
        return name
    suffix = '__' + hashlib.sha1(name.encode()).hexdigest()[:12]
    prefix = name.encode()[: NAME_LIMIT - len(suffix)].decode(errors='ignore')
    return prefix + suffix


class Outputs:
    """What a component storing model outputs keyed by source row has: they go to ``outputs`` (also the name of
    the output column), named by its identifier and uuid, for the rows of ``select``'s table."""

    identifier: str
    select: Query

    @property
    def predict_id(self) -> str:
        return f'{self.identifier}__{self.ensure_uuid()[:8]}'  # type: ignore[attr-defined]

    @property
    def outputs(self) -> str:
        return outputs_table(self.predict_id)

    @property
    def source(self) -> str:
        return self.select.table


@dataclass(eq=False)
class Listener(Outputs, Component):
    type_id: ClassVar[str] = 'Listener'

    identifier: str = ''
    model: Any = None
    key: Any = None
    select: Any = None  # a query, or just a table name
    upstream: list = field(default_factory=list)
    #: whether a write through superduper computes this listener's outputs before ``execute()`` returns (True), or
    #: only records its changes for the workers (False); ``None``: the datalayer's ``outputs`` setting
    sync: bool | None = field(default=None, metadata={'optional': True})
    #: the model returns a list per row: store each item as a row of its own (a chunk), with the source key and the
    #: item's position
    flatten: bool = field(default=False, metadata={'optional': True})
    #: vectors the rows already have, taken as the listener's outputs instead of computing them: a column of the
    #: selected table (``'embedding'``) or ``(table, column)`` of another table keyed by the same primary key
    #: values. Rows without one are computed by the model (which also encodes queries)
    adopt: Any = field(default=None, metadata={'optional': True})

    def __post_init__(self) -> None:
        if not isinstance(self.model, Component) or self.model.type_id != 'Model':
            hint = ' (wrap a function as ObjectModel(identifier, object=fn))' if callable(self.model) else ''
            raise ComponentError(f'Listener {self.identifier!r}: model must be a Model, got {type(self.model).__name__}{hint}')
        if self.key is None:
            raise ComponentError(f'Listener {self.identifier or self.model.identifier!r}: key= names the input field(s)')
        input_maker(self.key)  # a malformed key fails here, before any work
        if self.sync not in (None, True, False):
            raise ComponentError(f'Listener {self.identifier!r}: sync= is True, False or None, got {self.sync!r}')
        if self.flatten not in (True, False):
            raise ComponentError(f'Listener {self.identifier!r}: flatten= is True or False, got {self.flatten!r}')
        self._check_adopt()
        if isinstance(self.select, str):
            self.select = Query(self.select)
        if not isinstance(self.select, Query) or self.select.action != 'select':
            raise ComponentError(f'Listener {self.identifier!r}: select must be a select query or a table name')
        self.select = self.select.bind(None)  # stored declaratively; run against whichever db applies it
        self.identifier = self.identifier or self.model.identifier
        super().__post_init__()

    def _check_adopt(self) -> None:
        adopt = self.adopt
        if isinstance(adopt, (tuple, list)):
            self.adopt = adopt = list(adopt)
        if adopt is None or isinstance(adopt, str) and adopt or (
                isinstance(adopt, list) and len(adopt) == 2 and all(isinstance(a, str) and a for a in adopt)):
            if adopt is not None and self.flatten:
                raise ComponentError(f'Listener {self.identifier!r}: adopt= takes one vector a row; flatten=True '
                                     'makes chunks')
            return
        raise ComponentError(f"Listener {self.identifier!r}: adopt= is a column name or (table, column), got {adopt!r}")

    @property
    def adopted_from(self) -> tuple[str, str] | None:
        """(table, column) whose vectors are taken as outputs; ``None`` if none are."""
        if self.adopt is None:
            return None
        return (self.source, self.adopt) if isinstance(self.adopt, str) else (self.adopt[0], self.adopt[1])

    def check(self, db: Any) -> None:
        db.listening.check(self)

    def on_create(self, db: Any) -> None:
        db.listening.prepare(self)

    def on_applied(self, db: Any) -> None:
        db.listening.start(self)

    def on_reapplied(self, db: Any) -> None:
        db.listening.resume(self)

    def on_deferred(self, db: Any) -> list[str]:
        return db.listening.queue(self)

    def on_remove(self, db: Any) -> None:
        db.listening.stop(self)
