"""What the MongoDB metadata store, change stream and output log ask of the MongoDB data backend
(``superduper.backends.mongodb.data_backend``), so that none of them imports the backend that builds them."""

from __future__ import annotations

from typing import Any, ContextManager, Protocol

from superduper.backends.base import DataBackend


class TrackedWrites(Protocol):
    """What ``MongoBackend.begin()`` yields: while ``track`` is set, the keys written per collection and the
    session's operation time."""

    track: bool
    written: dict[str, list]

    @property
    def operation_time(self) -> Any: ...


class MongoBackend(DataBackend, Protocol):
    database: Any  # the driver's ``Database`` (pymongo or mongomock)

    def begin(self) -> ContextManager[TrackedWrites]: ...

    def supports_change_streams(self) -> bool:
        """Replica sets and sharded clusters have change streams; a standalone server and mongomock do not."""
