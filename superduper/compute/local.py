"""The default compute backend: work runs in this process, before ``execute()`` returns."""

from __future__ import annotations

from typing import Any, Callable


class LocalComputeBackend:
    scheme = 'local'
    #: whether listeners' work and training are sent elsewhere (see ``superduper.compute.base``)
    distributed = False

    def __init__(self, uri: str = 'local', cfg: Any = None, databackend: Any = None):
        self.uri = uri

    def __repr__(self) -> str:
        return 'LocalComputeBackend()'

    def follow_up(self, db: Any, batch: Any) -> int:
        raise NotImplementedError('local compute runs batches in the calling process')

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def close(self) -> None:
        pass
