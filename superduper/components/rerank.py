"""Reranking rows already fetched (e.g. by a vector search): score ``row[key]`` against a query with a reranker
and keep the best ``n``. Independent of any runtime: it sees only rows and a model."""

from __future__ import annotations

from typing import Any, Sequence

from superduper.base.exceptions import ModelError
from superduper.components.model import Model

SCORE = '_rerank_score'


def rerank(reranker: Model, query: str, rows: Sequence[dict], key: str, n: int | None = None) -> list[dict]:
    """The ``n`` rows (all if ``None``) scoring highest for ``query``, best first, each a copy with ``_rerank_score``;
    rows with equal scores keep their incoming order. ``reranker.predict(query, texts)`` gives one score a text."""
    rows = list(rows)
    if not rows:
        return []
    texts = [_text(reranker, row, key) for row in rows]
    scores = _scores(reranker, query, texts)
    order = sorted(range(len(rows)), key=lambda i: -scores[i])
    return [{**rows[i], SCORE: scores[i]} for i in order[: len(rows) if n is None else max(n, 0)]]


def _text(reranker: Model, row: dict, key: str) -> Any:
    if key not in row:
        raise ModelError(f'reranker {reranker.identifier!r}: a row has no {key!r} (it has {sorted(row)})')
    return row[key]


def _scores(reranker: Model, query: str, texts: list) -> list[float]:
    scores = reranker.predict(query, texts)
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError) as e:
        raise ModelError(f'reranker {reranker.identifier!r}: scores must be numbers ({e})') from None
    if len(scores) != len(texts):
        raise ModelError(f'reranker {reranker.identifier!r} returned {len(scores)} scores for {len(texts)} documents')
    return scores
