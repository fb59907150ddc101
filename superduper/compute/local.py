"""The default compute backend: work runs in this process, before ``execute()`` returns.

It is the ``ComputeBackend`` protocol (``superduper.compute.base``) with ``distributed = False``: the runtime then
computes batches, backfills and fits itself, and never sends them here.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator


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

    def backfill(self, db: Any, listener: Any, total: int) -> Iterator[tuple[int, int]]:
        raise NotImplementedError('local compute runs backfills in the calling process')

    def fit(self, db: Any, model: Any, X: Any, y: str | None, train: Any) -> tuple[str, int]:
        raise NotImplementedError('local compute fits in the calling process')

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def close(self) -> None:
        pass
