"""The rows a filter matched, remembered between filtered vector searches with that filter.

A filter used again is read once (every matching id, up to ``MAX_ROWS``) and kept as a ``Subset`` of the index's
vectors, so the next searches with it look only among those (hnswlib's filter callback over their labels, or an
exact scan of a few) without reading the database for them. What is remembered is only a plan: every row a search
returns is checked against the filter in the database, in one read of the ``n`` hits, so no row that stopped
matching is ever returned. It is forgotten when the index's vectors change (a write through this process or another
that the index followed) and a poll interval after it was read, the same delay within which the index itself
follows other programs' writes; the first searches after that plan as usual, and the filter is read again once a
poll interval has passed since it was last read.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

MAX_ROWS = 200_000  # matching rows remembered per filter (a set of their labels: about 70 bytes each)
KEPT = 32  # filters remembered per process


@dataclass(frozen=True)
class Matching:
    searcher: Any  # the searcher whose ``Subset`` this is
    subset: Any
    count: int  # rows the filter matched
    read_at: float  # monotonic clock before the rows were read


class MatchingRows:
    def __init__(self) -> None:
        #: a float: not to be read again before this time (monotonic clock)
        self._kept: OrderedDict[Hashable, Matching | float] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, key: Hashable, searcher: Any, ttl: float) -> Matching | None:
        """The rows remembered for ``key``, if read less than ``ttl`` seconds ago and ``searcher`` is unchanged."""
        with self._lock:
            found = self._kept.get(key)
        if not isinstance(found, Matching) or found.searcher is not searcher:
            return None
        if found.subset.version != searcher.version or time.monotonic() - found.read_at >= ttl:
            return None
        return found

    def due(self, key: Hashable, ttl: float) -> bool:
        """Whether reading the rows ``key`` matches is due: never read, or last read ``ttl`` or more seconds ago."""
        with self._lock:
            found = self._kept.get(key)
        if found is None:
            return True
        if isinstance(found, Matching):
            return time.monotonic() - found.read_at >= ttl
        return time.monotonic() >= found

    def keep(self, key: Hashable, matching: Matching | float) -> None:
        """Remember the rows read for ``key``, or (a monotonic time) not to read them again before then."""
        with self._lock:
            self._kept.pop(key, None)
            self._kept[key] = matching
            while len(self._kept) > KEPT:
                self._kept.popitem(last=False)

    def forget(self, key: Hashable, ttl: float) -> None:
        """A row remembered no longer matches: plan afresh, and read the rows again ``ttl`` after they were read."""
        with self._lock:
            found = self._kept.get(key)
            if isinstance(found, Matching):
                self._kept[key] = found.read_at + ttl
