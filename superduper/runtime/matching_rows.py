"""The rows a filter matched, remembered between filtered vector searches with that filter.

A filter used again is read once (every matching id, up to ``MAX_ROWS``) and kept as a ``Subset`` of the index's
vectors, so the next searches with it look only among those (hnswlib's filter callback over their labels, or an
exact scan of a few) without reading the database for them. What is remembered is only a plan: every row a search
returns is checked against the filter in the database, in one read of the ``n`` hits, so no row that stopped
matching is ever returned. It is forgotten when the index's vectors change (a write through this process or another
that the index followed) and a poll interval after it was read, the same delay within which the index itself
follows other programs' writes; the first searches after that plan as usual, and the filter is read again once a
poll interval has passed since it was last read, if it is still searched often enough to pay for the read: the
rows are read when the searches with the filter in about the last poll interval, at what a search planned on its own
took with it, cost more than reading the ids it matched at what reading ids took (both measured here), so a filter
searched now and then is planned per search, instead of reading every row it matches each time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

MAX_ROWS = 200_000  # matching rows remembered per filter (a set of their labels: about 70 bytes each)
KEPT = 32  # filters remembered per process
#: the cost of reading a matching id and placing it in a subset, until one read here says (seconds)
READ_PER_ID = 3e-6
SMOOTHING = 0.3  # weight of the newest measurement in the running costs


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
        #: per filter: when last searched, searches with it in about the last poll interval (a count decaying by
        #: ``e`` every poll interval), and what a search planned on its own took with it (seconds; ``None``: unknown)
        self._uses: OrderedDict[Hashable, tuple[float, float, float | None]] = OrderedDict()
        self._read_per_id = READ_PER_ID
        self._lock = threading.Lock()

    def used(self, key: Hashable, ttl: float) -> float:
        """Count a search with ``key``'s filter; returns about how many used it in the last ``ttl`` seconds, this
        one included."""
        now = time.monotonic()
        with self._lock:
            last, uses, took = self._uses.pop(key, (now, 0.0, None))
            uses = uses * math.exp(-(now - last) / ttl) + 1.0 if ttl > 0 else 1.0
            self._uses[key] = (now, uses, took)
            while len(self._uses) > 4 * KEPT:
                self._uses.popitem(last=False)
        return uses

    def planned(self, key: Hashable, seconds: float) -> None:
        """A search with ``key``'s filter planned on its own took ``seconds``."""
        with self._lock:
            if key in self._uses:
                last, uses, took = self._uses[key]
                self._uses[key] = (last, uses, seconds if took is None else _smoothed(took, seconds))

    def read(self, seconds: float, ids: int) -> None:
        """Reading ``ids`` matching ids and placing them took ``seconds``."""
        if ids:
            with self._lock:
                self._read_per_id = _smoothed(self._read_per_id, seconds / ids)

    def worth_reading(self, key: Hashable, uses: float, rows: float) -> bool:
        """Whether reading about ``rows`` matching ids costs less than the ``uses`` recent searches with the filter
        cost planned on their own; from the second search within about a poll interval at least."""
        with self._lock:
            took = self._uses.get(key, (0.0, 0.0, None))[2]
            per_id = self._read_per_id
        return uses >= 1.5 and (took is None or uses * took >= rows * per_id)

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


def _smoothed(previous: float, latest: float) -> float:
    return (1 - SMOOTHING) * previous + SMOOTHING * latest
