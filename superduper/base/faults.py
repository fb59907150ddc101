"""Named fault points, for the fault suite: ``SUPERDUPER_FAULT=<point>[.<tag>][:<n>]`` kills this process with
SIGKILL the ``n``-th time (default: the first) it reaches ``<point>`` (with that tag, if one is given), as a crash or
an operator's ``kill -9`` would.

Points: ``after_metadata_commit`` (a component's record is stored, nothing it sets up has run yet; tagged with
the component's type: ``after_metadata_commit.Listener``),
``after_claim`` (a batch of changes is leased, nothing computed), ``before_finish`` (outputs computed, not
stored), ``after_finish`` (outputs stored, the chain not taken over), ``holding_artifacts`` (artifacts held, their
bytes not written; tagged ``component``, ``table`` or ``index``), ``collecting_artifact`` (an artifact's bytes
deleted, its collection not committed). Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_hits: dict[str, int] = {}
_lock = threading.Lock()


def point(name: str, tag: str | None = None) -> None:
    wanted = os.environ.get('SUPERDUPER_FAULT')
    if not wanted:
        return
    where, _, times = wanted.partition(':')
    if where != name and where != f'{name}.{tag}':
        return
    with _lock:
        _hits[where] = _hits.get(where, 0) + 1
        if _hits[where] == int(times or 1):
            os.kill(os.getpid(), signal.SIGKILL)
