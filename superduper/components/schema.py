"""``Schema``: field names to types, with the column-wise encoding of rows for writes and decoding for reads."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Sequence

from superduper.base.document import Document
from superduper.base.exceptions import InvalidValue, UnknownField
from superduper.base.trust import UntrustedCode
from superduper.components.component import Component
from superduper.components.datatype import SCALARS, BadValue, FieldType, resolve_type

ANY = SCALARS['any']

if TYPE_CHECKING:
    from superduper.base.protocols import Artifacts


@dataclass(eq=False)
class Schema(Component):
    type_id: ClassVar[str] = 'Schema'

    fields: dict[str, Any] = field(default_factory=dict)
    types: dict[str, FieldType] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.types = {name: resolve_type(spec) for name, spec in self.fields.items()}

    #: whether fields that are not declared are accepted (and stored as given)
    open: ClassVar[bool] = False

    def field_names(self) -> list[str]:
        return list(self.types)

    def check_fields(self, table: str, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.types:
                raise UnknownField(f'table {table!r} has no field {name!r}; fields: {", ".join(self.types)}')

    def encode_columns(
        self, table: str, keys: Sequence[str], columns: list[list], artifacts: 'Artifacts', first_row: int = 0
    ) -> list[list]:
        """Check and convert each column; the first bad value raises ``InvalidValue`` naming table, field and row."""
        out = []
        for key, values in zip(keys, columns):
            ftype = self.types[key] if not self.open else self.types.get(key, ANY)
            try:
                out.append(ftype.encode(values, artifacts))
            except BadValue as e:
                reason = f' ({e.reason})' if e.reason else ''
                raise InvalidValue(
                    f'table {table!r}, field {key!r}, row {first_row + e.index}: expected {ftype.expected}, '
                    f'got {_short(e.value)}{reason}'
                ) from None
        return out

    def row_decoder(self, keys: Sequence[str], artifacts: 'Artifacts') -> Callable[[list], list[Document]]:
        """A function turning a batch of result tuples (in ``keys`` order) into ``Document``s; with ``keys`` of
        ``None``, a batch of whole rows as dicts (schemaless backends)."""
        if keys is None:
            return self._dict_decoder(artifacts)
        build = documents_builder(tuple(keys))
        decoders = [(i, self.types[k]) for i, k in enumerate(keys) if k in self.types and self.types[k].decodes]
        if not decoders:
            return build

        def decode(batch: list) -> list[Document]:
            if not batch:
                return []
            columns = list(zip(*batch))
            for i, ftype in decoders:
                with self._decoding(keys[i]):
                    columns[i] = ftype.decode(columns[i], artifacts)
            return build(zip(*columns))

        return decode


    def column_decoder(self, keys: Sequence[str], artifacts: 'Artifacts') -> Callable[[list], list]:
        """A function decoding a batch given column by column (in ``keys`` order): the columns of fields whose type
        decodes become lists of their values; the others are returned as they came (lists, or Arrow arrays a
        DataFrame takes as they are)."""
        decoders = [(i, self.types[k]) for i, k in enumerate(keys) if k in self.types and self.types[k].decodes]

        def decode(columns: list) -> list:
            columns = list(columns)
            for i, ftype in decoders:
                values = columns[i]
                values = values.to_pylist() if hasattr(values, 'to_pylist') else list(values)
                with self._decoding(keys[i]):
                    columns[i] = list(ftype.decode(values, artifacts))
            return columns

        return decode

    @contextlib.contextmanager
    def _decoding(self, field: str) -> Iterator[None]:
        try:
            yield
        except UntrustedCode as e:
            raise UntrustedCode(f'table {self.identifier!r}, field {field!r}: {e}') from None

    def _dict_decoder(self, artifacts: 'Artifacts') -> Callable[[list], list[Document]]:
        decoders = [(k, t) for k, t in self.types.items() if t.decodes]

        def decode(batch: list) -> list[Document]:
            for key, ftype in decoders:
                having = [row for row in batch if row.get(key) is not None]
                if having:
                    with self._decoding(key):
                        decoded = ftype.decode([row[key] for row in having], artifacts)
                    for row, value in zip(having, decoded):
                        row[key] = value
            return [Document(row) for row in batch]

        return decode


@dataclass(eq=False)
class OpenSchema(Schema):
    """The declared fields, typed; any other field stored and read back as given (a MongoDB collection)."""

    open: ClassVar[bool] = True

    def check_fields(self, table: str, names: Iterable[str]) -> None:
        pass


@functools.lru_cache(maxsize=1024)
def documents_builder(keys: tuple[str, ...]) -> Callable[[Iterable[tuple]], list[Document]]:
    """``rows -> [Document]`` for rows of these keys, compiled to a dict display: about twice as fast as
    ``Document(zip(keys, row))``, which is most of the cost of reading a table. Keys enter only as ``repr``
    literals."""
    if not keys:
        return lambda rows: [Document() for _ in rows]
    names = ', '.join(f'v{i}' for i in range(len(keys)))
    items = ', '.join(f'{key!r}: v{i}' for i, key in enumerate(keys))
    source = f'lambda rows: [Document({{{items}}}) for ({names},) in rows]'
    return eval(source, {'Document': Document})  # noqa: S307


def _short(value: Any) -> str:
    shape, dtype = getattr(value, 'shape', None), getattr(value, 'dtype', None)
    if shape is not None and dtype is not None:
        return f'{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}'
    text = ' '.join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + '...'
