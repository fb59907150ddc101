"""Running ``match()``: keyword search alone, or fused with a ``like()`` vector search by reciprocal rank fusion, then
reranked if asked. The parts are searched under the query's filters (each exact under them), so the fused list is
exact too; rows are fetched by primary key once, in the fused order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from superduper.base.document import Document
from superduper.base.exceptions import QueryError
from superduper.base.query import Condition, Cursor, Query, key_in
from superduper.components.listener import outputs_table
from superduper.components.rerank import SCORE as RERANK_SCORE
from superduper.components.rerank import rerank
from superduper.runtime.chunk_search import CHUNK, CHUNK_POSITION
from superduper.runtime.keyword_search import passing

if TYPE_CHECKING:
    from superduper.runtime.tables import TableInfo

#: the fewest candidates each part of a hybrid (or reranked) search ranks: four times the rows returned, at least this
CANDIDATES = 20
RANKS = ('_vector_rank', '_keyword_rank')
CHUNK_FIELDS = (CHUNK, CHUNK_POSITION)


def chunked(rows: list) -> bool:
    """Whether the vector part searched through an index over chunks (its rows carry their best chunk)."""
    return any(CHUNK in row for row in rows)


def candidates(n: int) -> int:
    return max(4 * n, CANDIDATES)


def search(executor: Any, info: 'TableInfo', query: Query, where: Condition | None) -> Any:
    """The rows of a ``match()`` query (hybrid after ``like()``), best first, with ``_score`` (and the parts' ranks)."""
    text, index, _, weights, rrf_k = query.match_
    if len(info.primary_key) != 1:
        raise QueryError(f'match() on {info.name!r}: keyword search needs a single-column primary key, not '
                         f'{info.primary_key}')
    key = info.primary_key[0]
    n = query.search_n()
    depth = n
    if query.like_ is not None or query.rerank_ is not None:
        depth = (query.rerank_ and query.rerank_[3]) or candidates(n)
    allowed = passing(executor.db, info.name, key, where) if where is not None else None
    keyword = executor.db.keyword_indexes.search(index, info.name, text, depth, where, allowed)
    if query.like_ is None:
        ranked = [(k, {'_score': s}) for k, s in keyword]
    else:
        spec, vector_index, _ = query.like_
        nearest = dataclasses.replace(query, match_=None, rerank_=None, like_=(spec, vector_index, depth),
                                      action='select', columns=(key,), joined=(), limit_=None, offset_=0, order=())
        found = list(executor._like(info, nearest, where))
        ranked = fuse([row[key] for row in found], [k for k, _ in keyword], weights, rrf_k)
        if chunked(found):  # through an index over chunks: each row's best chunk as like() gives it (None if none)
            best = {row[key]: {c: row[c] for c in CHUNK_FIELDS} for row in found}
            for k, entry in ranked:
                entry.update(best.get(k, dict.fromkeys(CHUNK_FIELDS)))
    if query.rerank_ is None:
        ranked = ranked[:n]
    rows = _rows(executor, info, query, ranked)
    if query.action == 'one':
        return next(iter(rows), None)
    wanted = executor._columns(info, query)
    scores = ['_score'] + (list(RANKS) if query.like_ is not None else [])
    scores += list(CHUNK_FIELDS) if chunked(rows) else []
    scores += [RERANK_SCORE] if query.rerank_ is not None else []
    outputs = [outputs_table(p) for p in query.joined]
    return Cursor(iter([rows]), None if wanted is None else [*wanted, *outputs, *scores])


def fuse(vector: list, keyword: list, weights: tuple[float, float], k: float) -> list[tuple[Any, dict]]:
    """Keys by reciprocal rank fusion of two ranked lists: ``sum(weight / (k + rank))`` over the lists holding the
    key (ranks from 1), best first; equal scores by the vector rank, then the keyword rank. Keys scoring 0 (found
    only by a part weighted 0) are left out."""
    ranks: dict[Any, dict] = {}
    for part, keys in zip(RANKS, (vector, keyword)):
        for rank, key in enumerate(keys, 1):
            ranks.setdefault(key, dict.fromkeys(RANKS))[part] = rank
    for entry in ranks.values():
        entry['_score'] = sum(w / (k + entry[p]) for w, p in zip(weights, RANKS) if entry[p] is not None)
    order = sorted(ranks.items(), key=lambda kv: (-kv[1]['_score'], kv[1]['_vector_rank'] or math.inf,
                                                  kv[1]['_keyword_rank'] or math.inf))
    return [(key, entry) for key, entry in order if entry['_score'] > 0]


def _rows(executor: Any, info: 'TableInfo', query: Query, ranked: list[tuple[Any, dict]]) -> list[Document]:
    """The ranked rows fetched (the query's columns, outputs joined), in order, reranked and cut to the page."""
    key = info.primary_key[0]
    reranker_key = query.rerank_[2] if query.rerank_ is not None else None
    columns = query.columns
    if columns:
        columns = columns + tuple(c for c in (key, reranker_key) if c is not None and c not in columns)
    fetch = dataclasses.replace(query, like_=None, match_=None, rerank_=None, action='select', columns=columns,
                                limit_=None, offset_=0, order=())
    keys = [k for k, _ in ranked]
    found = {row[key]: row for row in executor._select(info, fetch, key_in((key,), keys)).tolist()} if keys else {}
    rows = [Document({**found[k], **extra}) for k, extra in ranked if k in found]  # a row deleted since drops out
    if query.rerank_ is not None:
        reranker, text, _, _ = query.rerank_
        model = executor.db.load('Model', reranker) if isinstance(reranker, str) else reranker
        rows = [Document(r) for r in rerank(model, text, rows, reranker_key, query.search_n())]
    if query.columns:
        extra = [c for c in (key, reranker_key) if c is not None and c not in query.columns]
        for row in rows:
            for c in extra:
                row.pop(c, None)
    return rows[query.offset_ :][: query.limit_] if query.limit_ is not None else rows[query.offset_ :]
