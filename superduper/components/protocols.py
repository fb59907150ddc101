"""What declarations need of the runtime, as protocols: components, field types and queries name these in their
signatures instead of importing the runtime (``Datalayer``) or a backend (``ArtifactStore``)."""

from __future__ import annotations

from typing import Any, Protocol


class Artifacts(Protocol):
    """Where encoded values and component artifacts are kept (``superduper.backends.artifacts.ArtifactStore``, or a
    package's folder)."""

    def put_bytes(self, data: bytes) -> str: ...

    def get_bytes(self, key: str) -> bytes: ...

    def put_file(self, local_path: str) -> str: ...

    def get_file(self, key: str) -> str: ...


class Runtime(Protocol):
    """What a query or a model asks of a datalayer (``superduper.base.datalayer.Datalayer``)."""

    def execute(self, query: Any) -> Any: ...

    def fit(self, model: Any, X: Any, y: str | None = None, select: Any = None) -> Any: ...
