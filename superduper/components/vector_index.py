"""``VectorIndex``: search a listener's vector outputs, combined with the rest of the query API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from superduper.base.exceptions import ComponentError
from superduper.components.component import Component
from superduper.components.datatype import Vector
from superduper.components.listener import Listener
from superduper.vector_search.exact import MEASURES

SEARCHERS = ('auto', 'exact', 'hnsw', 'native', 'pgvector')
QUANTIZATIONS = (None, 'int8', 'binary')


@dataclass(eq=False)
class VectorIndex(Component):
    """``VectorIndex('my-index', indexing_listener=model.to_listener(select=t.select(), key='txt'))``.

    ``compatible_listener`` encodes queries on another key into the same space (text-to-image search);
    ``searcher`` is ``'exact'``, ``'hnsw'``, ``'native'`` (search inside the database: pgvector on PostgreSQL,
    ClickHouse's or DuckDB's vector functions; ``'pgvector'`` names it too) or ``'auto'``: native where the vectors
    are stored natively, else HNSW from 10,000 vectors when hnswlib is installed, else exact.

    ``quantization='int8'`` or ``'binary'`` keeps the vectors in memory only as int8 codes (a quarter of float32)
    or sign bits (a thirty-second), scanned for each query; the best candidates are scored again exactly on the
    float32 vectors, kept in a file mapped read-only (int8: exact answers; binary: near-exact). It searches in
    process (``searcher`` ``'auto'`` or ``'exact'``).
    """

    type_id: ClassVar[str] = 'VectorIndex'

    indexing_listener: Any = None
    compatible_listener: Any = None
    measure: str = 'cosine'
    searcher: str = 'auto'
    quantization: str | None = field(default=None, metadata={'optional': True})

    def __post_init__(self) -> None:
        super().__post_init__()
        for role in ('indexing_listener', 'compatible_listener'):
            value = getattr(self, role)
            if value is not None and not isinstance(value, Listener) or (role == 'indexing_listener' and value is None):
                raise ComponentError(f'VectorIndex {self.identifier!r}: {role} must be a Listener, got {type(value).__name__}')
        if self.indexing_listener.flatten:
            raise ComponentError(
                f'VectorIndex {self.identifier!r}: listener {self.indexing_listener.identifier!r} flattens its '
                "outputs into chunks; index a listener over the chunks instead (select=db[chunks.outputs].select(), "
                'key=chunks.outputs)'
            )
        if self.measure not in MEASURES:
            raise ComponentError(f'VectorIndex {self.identifier!r}: measure={self.measure!r}; expected one of {", ".join(MEASURES)}')
        if self.searcher not in SEARCHERS:
            raise ComponentError(f'VectorIndex {self.identifier!r}: searcher={self.searcher!r}; expected one of {", ".join(SEARCHERS)}')
        if self.quantization not in QUANTIZATIONS:
            raise ComponentError(f'VectorIndex {self.identifier!r}: quantization={self.quantization!r}; expected None, '
                                 "'int8' or 'binary'")
        if self.quantization is not None and self.searcher not in ('auto', 'exact'):
            raise ComponentError(f'VectorIndex {self.identifier!r}: quantization={self.quantization!r} searches in '
                                 f"process; searcher={self.searcher!r} cannot (use 'auto' or 'exact')")

    @property
    def source(self) -> str:
        return self.indexing_listener.source

    def dimension(self, db: Any) -> int | None:
        """The length of the indexed vectors; ``None`` while the listener has stored no output to tell it."""
        outputs = self.indexing_listener.outputs
        ftype = db.table_info(outputs).schema.types.get(outputs)
        if ftype is None:
            return None
        if not isinstance(ftype, Vector):
            raise ComponentError(
                f'VectorIndex {self.identifier!r}: listener {self.indexing_listener.identifier!r} outputs '
                f'{ftype.name}, not vectors; give its model datatype="vector[float32:N]" or return 1-d arrays'
            )
        return ftype.dim

    def check(self, db: Any) -> None:
        db.vector_indexes.switches.begin(self)  # before the new listener is applied: searches keep this version

    def on_create(self, db: Any) -> None:
        self.dimension(db)

    def on_applied(self, db: Any) -> None:
        if not db.vector_indexes.switches.complete(self):
            db.vector_indexes.build(self)

    def on_reapplied(self, db: Any) -> None:
        db.vector_indexes.switches.complete(self)  # a switch whose applying process died is finished

    def on_remove(self, db: Any) -> None:
        db.vector_indexes.drop(self)
