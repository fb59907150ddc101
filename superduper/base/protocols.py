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
    """A datalayer (``superduper.runtime.datalayer.Datalayer``) as queries, models, components' lifecycle hooks and
    the runtime's own parts see it: they name this instead of importing the class that holds them."""

    databackend: Any
    metadata: Any
    artifact_store: Artifacts
    artifacts: Any  # who holds which artifact (``superduper.runtime.artifact_gc.ArtifactCollector``)
    compute: Any
    cfg: Any

    @property
    def changes(self) -> Any: ...

    @property
    def listening(self) -> Any: ...

    @property
    def vector_indexes(self) -> Any: ...

    @property
    def keyword_indexes(self) -> Any: ...

    @property
    def schedules(self) -> Any: ...

    def execute(self, query: Any) -> Any: ...

    def table_info(self, name: str) -> Any: ...

    def forget_table(self, name: str) -> None: ...

    def apply(self, component: Any, wait: bool = True, **variables: str) -> Any: ...

    def load(self, type_id: str, identifier: str, version: int | None = None) -> Any: ...

    def load_record(self, record: dict) -> Any: ...

    def components_generation(self, fresh: bool = False) -> int: ...

    def fit(self, model: Any, X: Any, y: str | None = None, select: Any = None) -> Any: ...
