"""Rows as they come back from queries: ``Document`` (a dict) and lazy handles to stored values."""

from __future__ import annotations

from typing import Any, Callable

_EMPTY = type('Empty', (), {'__repr__': lambda self: '<EMPTY>'})()


class LazyArtifact:
    """A value kept in the artifact store, fetched and decoded on first ``unpack()``."""

    __slots__ = ('key', 'datatype', '_load', '_value')

    def __init__(self, key: str, datatype: str, load: Callable[[str], Any]):
        self.key = key
        self.datatype = datatype
        self._load = load
        self._value: Any = _EMPTY

    @property
    def x(self) -> Any:
        """The value if it has been loaded, else ``<EMPTY>`` (as in the seed documents)."""
        return self._value

    def unpack(self) -> Any:
        if self._value is _EMPTY:
            self._value = self._load(self.key)
        return self._value

    def __repr__(self) -> str:
        return f'LazyArtifact(datatype={self.datatype!r}, key={self.key[:12]!r}, x={self._value!r})'

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazyArtifact) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


class Document(dict):
    """A row: a plain ``dict`` whose lazily loaded values are fetched by ``unpack()``."""

    __slots__ = ()

    def unpack(self, db: Any = None) -> 'Document':
        """A copy with every ``LazyArtifact`` replaced by its value (``db`` is accepted for seed compatibility)."""
        return Document({k: _unpack(v) for k, v in self.items()})

    def __repr__(self) -> str:
        return f'Document({dict.__repr__(self)})'


def _unpack(value: Any) -> Any:
    if isinstance(value, LazyArtifact):
        return value.unpack()
    if type(value) is dict or type(value) is Document:
        return {k: _unpack(v) for k, v in value.items()}
    if type(value) is list:
        return [_unpack(v) for v in value]
    return value
