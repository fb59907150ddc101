"""The lazy query API: ``db['t'].filter(t['x'] > 1).select('x').limit(10).execute()``.

A ``Query`` is an immutable description; nothing touches the database until ``execute()`` (or
``db.execute(query)``). Filters are a small tree of conditions that each backend compiles; values are always
bound parameters, never spliced into SQL.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from superduper.base.exceptions import QueryError
from superduper.base.frames import pandas_frame, pandas_from_columns, polars_frame, polars_from_columns, require

if TYPE_CHECKING:
    import pandas
    import polars

    from superduper.base.protocols import Runtime
    from superduper.base.document import Document


# ---- conditions -----------------------------------------------------------------------------------------------
class Condition:
    def __and__(self, other: 'Condition') -> 'Condition':
        return And((self, _condition(other)))

    def __or__(self, other: 'Condition') -> 'Condition':
        return Or((self, _condition(other)))

    def __invert__(self) -> 'Condition':
        return Not(self)

    def __bool__(self) -> bool:
        raise QueryError('combine conditions with & and |, not with `and`/`or`, and compare fields inside filter()')

    def fields(self) -> Iterator[str]:
        raise NotImplementedError


def _condition(value: Any) -> Condition:
    if not isinstance(value, Condition):
        raise QueryError(f'expected a condition such as t["x"] == 1, got {value!r}')
    return value


@dataclass(frozen=True, eq=False)
class Compare(Condition):
    field: str
    op: str  # == != < <= > >= in
    value: Any

    def fields(self) -> Iterator[str]:
        yield self.field


@dataclass(frozen=True, eq=False)
class KeysIn(Condition):
    """Rows whose composite key ``fields`` is one of ``values`` (tuples in ``fields`` order)."""

    fields_: tuple[str, ...]
    values: tuple[tuple, ...]

    def fields(self) -> Iterator[str]:
        yield from self.fields_


def key_in(fields: tuple[str, ...], keys: Iterable[Any]) -> Condition:
    """Rows whose primary key (one field, or several: ``keys`` are then tuples) is one of ``keys``."""
    if len(fields) == 1:
        return Compare(fields[0], 'in', tuple(keys))
    return KeysIn(tuple(fields), tuple(tuple(k) for k in keys))


@dataclass(frozen=True, eq=False)
class And(Condition):
    parts: tuple[Condition, ...]

    def fields(self) -> Iterator[str]:
        for part in self.parts:
            yield from part.fields()


@dataclass(frozen=True, eq=False)
class Or(Condition):
    parts: tuple[Condition, ...]

    def fields(self) -> Iterator[str]:
        for part in self.parts:
            yield from part.fields()


@dataclass(frozen=True, eq=False)
class Not(Condition):
    part: Condition

    def fields(self) -> Iterator[str]:
        yield from self.part.fields()


class Field:
    """A column reference, ``t['x']``: comparisons with it build conditions."""

    __slots__ = ('name',)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f'Field({self.name!r})'

    def __eq__(self, other: Any) -> Condition:  # type: ignore[override]
        return Compare(self.name, '==', other)

    def __ne__(self, other: Any) -> Condition:  # type: ignore[override]
        return Compare(self.name, '!=', other)

    def __lt__(self, other: Any) -> Condition:
        return Compare(self.name, '<', other)

    def __le__(self, other: Any) -> Condition:
        return Compare(self.name, '<=', other)

    def __gt__(self, other: Any) -> Condition:
        return Compare(self.name, '>', other)

    def __ge__(self, other: Any) -> Condition:
        return Compare(self.name, '>=', other)

    __hash__ = None  # type: ignore[assignment]

    def isin(self, values: Iterable[Any]) -> Condition:
        if isinstance(values, (str, bytes)):
            raise QueryError(f'isin() on {self.name!r} takes a collection of values, not a single string')
        return Compare(self.name, 'in', tuple(values))


_MONGO_OPS = {'$eq': '==', '$ne': '!=', '$lt': '<', '$lte': '<=', '$gt': '>', '$gte': '>=', '$in': 'in'}
_MONGO_FIELD_OPS = (*_MONGO_OPS, '$nin', '$not')
_MONGO_LOGIC = ('$and', '$or', '$nor')


def from_mongo(spec: Mapping[str, Any] | None) -> Condition | None:
    """``{'a': 1, 'b': {'$gt': 2}, '$or': [...]}`` as a condition (the seed documents' ``find`` filters): the
    operators every backend can run; others raise ``QueryError`` naming them."""
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise QueryError(f'a filter is a dict such as {{"brand": "Nike"}}, got {type(spec).__name__}')
    parts: list[Condition] = []
    for key, value in spec.items():
        if key in _MONGO_LOGIC:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value):
                raise QueryError(f'{key} takes a list of filters, got {value!r}')
            subs = tuple(c for c in (from_mongo(v) for v in value) if c is not None)
            if key == '$nor':
                parts.append(Not(Or(subs)))
            else:
                parts.append((And if key == '$and' else Or)(subs))
        elif not isinstance(key, str) or key.startswith('$'):
            raise QueryError(f'unsupported filter operator {key!r}; supported: {", ".join(_MONGO_LOGIC)}')
        elif isinstance(value, Mapping) and value and all(str(k).startswith('$') for k in value):
            parts.extend(_field_conditions(key, value))
        else:
            parts.append(Compare(key, '==', value))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _field_conditions(field: str, ops: Mapping[str, Any]) -> list[Condition]:
    out: list[Condition] = []
    for op, operand in ops.items():
        if op not in _MONGO_FIELD_OPS:
            raise QueryError(f'unsupported operator {op!r} on field {field!r}; supported: {", ".join(_MONGO_FIELD_OPS)}')
        if op in ('$in', '$nin'):
            if not isinstance(operand, (list, tuple, set, frozenset)):
                raise QueryError(f'{op} on field {field!r} takes a list of values, got {operand!r}')
            cond: Condition = Compare(field, 'in', tuple(operand))
            out.append(Not(cond) if op == '$nin' else cond)
        elif op == '$not':
            if not isinstance(operand, Mapping) or not operand:
                raise QueryError(f'$not on field {field!r} takes operators such as {{"$gt": 1}}, got {operand!r}')
            inner = _field_conditions(field, operand)
            out.append(Not(inner[0] if len(inner) == 1 else And(tuple(inner))))
        else:
            out.append(Compare(field, _MONGO_OPS[op], operand))
    return out


# ---- queries --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """A query on one table. Builders return new queries; ``execute()`` runs it.

    ``action`` says what ``execute()`` returns: ``select`` a streaming ``Cursor`` of ``Document``s, ``one`` a
    ``Document`` or ``None``, ``ids`` a list of primary keys, ``count`` an int, ``insert`` the new ids,
    ``update``/``delete`` the number of rows changed.
    """

    table: str
    db: 'Runtime | None' = field(default=None, repr=False, compare=False)
    action: str = 'select'
    columns: tuple[str, ...] | None = None
    where: Condition | None = None
    order: tuple[tuple[str, bool], ...] = ()
    limit_: int | None = None
    offset_: int = 0
    documents: Any = field(default=None, repr=False)
    values: dict[str, Any] | None = None
    joined: tuple[str, ...] = ()  # predict ids whose outputs are joined to each row
    like_: tuple | None = field(default=None, compare=False)  # (spec, vector index, n)
    rerank_: tuple | None = field(default=None, compare=False)  # (reranker, query text, key, candidates)
    match_: tuple | None = field(default=None, compare=False)  # (text, keyword index, n, weights, rrf_k)
    chunks_: bool = field(default=False, compare=False)  # like() over chunks: the chunks, not their sources
    keep_id: bool = False  # find() with a projection: '_id' comes back too, where rows have one (MongoDB's default)
    pipeline: tuple | None = field(default=None, repr=False)  # aggregate(): stages run by the database as given

    def _with(self, **changes: Any) -> 'Query':
        if self.action not in ('select',) and 'action' not in changes:
            raise QueryError(f'cannot refine a {self.action!r} query on {self.table!r}; build it from db[{self.table!r}]')
        for name in changes:
            if name not in _QUERY_FIELDS:
                raise TypeError(f'Query has no field {name!r}')
        query = object.__new__(Query)  # dataclasses.replace re-runs __init__: too slow for a hot path
        query.__dict__.update(self.__dict__)
        query.__dict__.update(changes)
        return query

    def __getitem__(self, name: str) -> Field:
        return Field(name)

    # -- reads
    def select(self, *columns: str) -> 'Query':
        return self._with(columns=tuple(columns) or None)

    def filter(self, *conditions: Condition) -> 'Query':
        where = self.where
        for cond in conditions:
            cond = _condition(cond)
            where = cond if where is None else And((where, cond))
        return self._with(where=where)

    def limit(self, n: int, offset: int = 0) -> 'Query':
        if not isinstance(n, int) or n < 0 or not isinstance(offset, int) or offset < 0:
            raise QueryError(f'limit needs non-negative integers, got n={n!r}, offset={offset!r}')
        return self._with(limit_=n, offset_=offset)

    def order_by(self, column: str, descending: bool = False) -> 'Query':
        return self._with(order=self.order + ((column, descending),))

    def outputs(self, *predict_ids: str) -> 'Query':
        """Add each listener's output to the rows (``None`` where it has none): the column is named
        ``_outputs__<predict_id>``, the same as the listener's output table."""
        return self._with(joined=self.joined + tuple(predict_ids))

    def like(self, spec: Any, vector_index: str, n: int = 10, chunks: bool = False) -> 'Query':
        """The ``n`` rows nearest to ``spec`` (``{key: value}`` encoded by the index's model, or a vector), among
        the rows the query's filters match, nearest first, each with its similarity in ``_score``.

        On a table whose rows a flattening listener splits into chunks, with an index over the chunks: each row
        once, scored by its best chunk, with that chunk in ``_chunk`` and its place in ``_position``; with
        ``chunks=True`` the ``n`` best chunks themselves (``_chunk_id``, ``_source``, ``_position``, ``_chunk``,
        ``_score``), of the rows the filters match."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise QueryError(f'like() needs n >= 1, got {n!r}')
        if not isinstance(vector_index, str):
            raise QueryError(f'vector_index= names a vector index, got {vector_index!r}')
        if chunks not in (True, False):
            raise QueryError(f'like() takes chunks=True or False, got {chunks!r}')
        return self._with(like_=(spec, vector_index, n), chunks_=chunks)

    def match(self, text: str, keyword_index: str, n: int | None = None,
              weights: Mapping[str, float] | Sequence[float] | None = None, rrf_k: int = 60) -> 'Query':
        """Keyword search: the ``n`` rows (default 10) of the keyword index ``keyword_index`` best matching ``text``,
        among the rows the query's filters match, best first with the engine's score in ``_score``.

        After ``like()`` it is a hybrid search: each part ranks ``max(4 n, 20)`` candidates, and rows come back by
        reciprocal rank fusion, ``_score = sum(weight / (rrf_k + rank))`` over the parts a row is in (ranks from 1),
        with each part's rank in ``_vector_rank`` and ``_keyword_rank`` (``None`` where a part did not find the row);
        ``n`` defaults to the ``like()`` one's. ``weights`` are ``{'vector': w, 'keyword': w}`` or ``(vector,
        keyword)``, default 1 each."""
        if not isinstance(text, str) or not text.strip():
            raise QueryError(f'match() on {self.table!r} needs a non-empty text to search for, got {text!r}')
        if not isinstance(keyword_index, str) or not keyword_index:
            raise QueryError(f'match() on {self.table!r}: keyword_index= names a keyword index, got {keyword_index!r}')
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise QueryError(f'match() on {self.table!r} needs n >= 1, got {n!r}')
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not rrf_k >= 0:
            raise QueryError(f'match() on {self.table!r}: rrf_k is a number >= 0, got {rrf_k!r}')
        return self._with(match_=(text, keyword_index, n, _fusion_weights(weights, self.table), rrf_k))

    def rerank(self, reranker: Any, query: str, key: str, candidates: int | None = None) -> 'Query':
        """Rerank a ``like()`` search (or a ``match()``, alone or hybrid): its ``candidates`` best rows (default
        ``4 n``, at least 20), matching the filters, are scored by ``reranker`` (a reranker model, or the identifier
        of an applied one) for the text ``query`` against field ``key``; the best ``n`` come back, best first, with
        ``_rerank_score`` beside the search's ``_score``."""
        if self.like_ is None and self.match_ is None:
            raise QueryError('rerank() reorders the rows of a search: call like() first, or match()')
        if not isinstance(query, str) or not query:
            raise QueryError(f'rerank() scores rows against a text, got {query!r}')
        if not isinstance(key, str) or not key:
            raise QueryError(f'rerank() needs key=, the field holding the text to score, got {key!r}')
        n = self.search_n()
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int)
                                       or candidates < n):
            raise QueryError(f'rerank() candidates is a whole number >= n ({n}), got {candidates!r}')
        return self._with(rerank_=(reranker, query, key, candidates))

    def search_n(self) -> int:
        """How many rows a search (``like``, ``match`` or both) returns."""
        if self.match_ is not None and self.match_[2] is not None:
            return self.match_[2]
        return self.like_[2] if self.like_ is not None else 10

    def get(self, **equal: Any) -> 'Query':
        """The one row whose fields equal these values; ``execute()`` gives a ``Document`` or ``None``."""
        query = self.filter(*[Compare(k, '==', v) for k, v in equal.items()]) if equal else self
        return query._with(action='one')

    def ids(self) -> 'Query':
        return self._with(action='ids')

    def count(self) -> 'Query':
        return self._with(action='count')

    # -- Mongo-style reads from the seed documents
    def find(self, filter: Mapping[str, Any] | None = None, projection: Mapping[str, Any] | None = None) -> 'Query':
        """``find({'brand': 'Nike', 'price': {'$lt': 100}}, {'name': 1})``: the filter's operators are those of
        ``from_mongo``; a projection names the fields to return, and ``_id`` (where rows have one) unless
        ``'_id': 0``."""
        query = self.filter(c) if (c := from_mongo(filter)) is not None else self
        if projection:
            if not isinstance(projection, Mapping):
                raise QueryError(f'a projection is a dict such as {{"name": 1}}, got {type(projection).__name__}')
            included = [k for k, v in projection.items() if v and k != '_id']
            if not included:
                raise QueryError(
                    f'projection {dict(projection)!r} on {self.table!r}: name the fields to return, e.g. {{"name": 1}} '
                    '(excluding fields other than _id is not supported)'
                )
            if any(not v for k, v in projection.items() if k != '_id'):
                raise QueryError(f'projection {dict(projection)!r} on {self.table!r} mixes included and excluded fields')
            keep = projection.get('_id', True)
            query = query.select(*(['_id'] if keep and '_id' in projection else []), *included)
            query = query._with(keep_id=bool(keep))
        return query

    def find_one(self, filter: Mapping[str, Any] | None = None, projection: Mapping[str, Any] | None = None) -> 'Query':
        return self.find(filter, projection)._with(action='one')

    def count_documents(self, filter: Mapping[str, Any] | None = None) -> 'Query':
        return self.find(filter).count()

    def aggregate(self, pipeline: Iterable[Mapping[str, Any]]) -> 'Query':
        """A MongoDB aggregation pipeline, run by the database as given (MongoDB collections only);
        ``execute()`` returns a ``Cursor`` of the documents it outputs, declared fields decoded."""
        stages = list(pipeline) if not isinstance(pipeline, Mapping) else None
        if not stages or not all(isinstance(s, Mapping) for s in stages):
            raise QueryError(f'aggregate on {self.table!r} takes a list of stages such as [{{"$match": {{...}}}}], '
                             f'got {pipeline!r}')
        return self._with(action='aggregate', pipeline=tuple(dict(s) for s in stages))

    def update_one(self, filter: Mapping[str, Any] | None, update: Mapping[str, Any]) -> 'Query':
        """Set fields on the first row matching ``filter``: ``update_one({'_id': i}, {'$set': {'x': 1}})``."""
        return self.find(filter).limit(1).update(_mongo_set(update, self.table))

    def update_many(self, filter: Mapping[str, Any] | None, update: Mapping[str, Any]) -> 'Query':
        return self.find(filter).update(_mongo_set(update, self.table))

    def delete_one(self, filter: Mapping[str, Any] | None = None) -> 'Query':
        return self.find(filter).limit(1).delete()

    def delete_many(self, filter: Mapping[str, Any] | None = None) -> 'Query':
        return self.find(filter).delete()

    # -- writes
    def insert(self, documents: Any) -> 'Query':
        """Insert dicts, ``Document``s or a pandas DataFrame; ``execute()`` returns the new ids."""
        return self._with(action='insert', documents=documents)

    def insert_one(self, document: Mapping[str, Any]) -> 'Query':
        """Insert one row; ``execute()`` returns its id."""
        return self._with(action='insert_one', documents=[document])

    def insert_many(self, documents: Any) -> 'Query':
        return self.insert(documents)

    def update(self, values: Mapping[str, Any]) -> 'Query':
        """Set ``values`` on every row the query's filter matches (the first ``n`` after ``limit(n)``);
        ``execute()`` returns how many."""
        if not isinstance(values, Mapping) or not values:
            raise QueryError(f'update on {self.table!r} needs a non-empty dict of field values, got {values!r}')
        return self._with(action='update', values=dict(values))

    def delete(self) -> 'Query':
        """Delete every row the query's filter matches (the first ``n`` after ``limit(n)``); ``execute()`` returns
        how many."""
        return self._with(action='delete')

    # -- running
    def execute(self) -> Any:
        if self.db is None:
            raise QueryError(f'query on {self.table!r} is not bound to a database; use db.execute(query)')
        return self.db.execute(self)

    def to_dict(self) -> dict[str, Any]:
        """The query as plain data (for storing inside components); writes are not stored."""
        if self.action not in ('select', 'one', 'ids', 'count'):
            raise QueryError(f'a {self.action!r} query cannot be stored in a component')
        return {
            'table': self.table, 'action': self.action, 'columns': list(self.columns) if self.columns else None,
            'where': _condition_to_dict(self.where), 'order': [list(o) for o in self.order],
            'limit': self.limit_, 'offset': self.offset_, 'joined': list(self.joined),
            **({'keep_id': True} if self.keep_id else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], db: 'Runtime | None' = None) -> 'Query':
        return cls(
            data['table'], db=db, action=data['action'], columns=tuple(data['columns']) if data['columns'] else None,
            where=_condition_from_dict(data['where']), order=tuple((c, d) for c, d in data['order']),
            limit_=data['limit'], offset_=data['offset'], joined=tuple(data.get('joined', ())),
            keep_id=data.get('keep_id', False),
        )

    def bind(self, db: 'Runtime') -> 'Query':
        return dataclasses.replace(self, db=db)

    def fields_used(self) -> Iterator[str]:
        if self.columns:
            yield from self.columns
        if self.where is not None:
            yield from self.where.fields()
        for column, _ in self.order:
            yield column
        if self.values:
            yield from self.values


_QUERY_FIELDS = frozenset(f.name for f in dataclasses.fields(Query))


def _fusion_weights(weights: Any, table: str) -> tuple[float, float]:
    """``(vector, keyword)`` weights of a hybrid search's parts."""
    if weights is None:
        return (1.0, 1.0)
    if isinstance(weights, Mapping):
        unknown = set(weights) - {'vector', 'keyword'}
        if unknown:
            raise QueryError(f'match() on {table!r}: weights are for "vector" and "keyword", got {sorted(unknown)}')
        pair = (weights.get('vector', 1.0), weights.get('keyword', 1.0))
    elif isinstance(weights, (list, tuple)) and len(weights) == 2:
        pair = tuple(weights)
    else:
        raise QueryError(f'match() on {table!r}: weights are {{"vector": w, "keyword": w}} or (vector, keyword), '
                         f'got {weights!r}')
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float('inf') for w in pair) \
            or not any(pair):
        raise QueryError(f'match() on {table!r}: weights are finite numbers >= 0, not all 0, got {weights!r}')
    return (float(pair[0]), float(pair[1]))


def _mongo_set(update: Any, table: str) -> dict[str, Any]:
    """The fields of an update document ``{'$set': {...}}``, the one update operator every backend runs."""
    if not isinstance(update, Mapping) or not update:
        raise QueryError(f'update on {table!r} takes an update document such as {{"$set": {{"x": 1}}}}, got {update!r}')
    others = [k for k in update if k != '$set']
    if others:
        kind = 'operator' if str(others[0]).startswith('$') else 'field outside $set'
        raise QueryError(f'unsupported update {kind} {others[0]!r} on {table!r}; supported: $set')
    if not isinstance(update['$set'], Mapping) or not update['$set']:
        raise QueryError(f'$set on {table!r} takes a non-empty dict of field values, got {update["$set"]!r}')
    return dict(update['$set'])


def _condition_to_dict(cond: Condition | None) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Compare):
        return {'field': cond.field, 'op': cond.op, 'value': list(cond.value) if cond.op == 'in' else cond.value}
    if isinstance(cond, Not):
        return {'not': _condition_to_dict(cond.part)}
    return {'and' if isinstance(cond, And) else 'or': [_condition_to_dict(c) for c in cond.parts]}


def _condition_from_dict(data: Any) -> Condition | None:
    if data is None:
        return None
    if 'field' in data:
        value = tuple(data['value']) if data['op'] == 'in' else data['value']
        return Compare(data['field'], data['op'], value)
    if 'not' in data:
        return Not(_condition_from_dict(data['not']))
    kind = 'and' if 'and' in data else 'or'
    return (And if kind == 'and' else Or)(tuple(_condition_from_dict(c) for c in data[kind]))


class Cursor:
    """Rows of a select, fetched from the database in batches as you iterate.

    As DataFrames (pandas and polars are optional: ``pip install 'superduper[pandas]'`` or ``'superduper[polars]'``):

    - ``to_pandas()`` / ``to_polars()``: the remaining rows as one DataFrame;
    - ``pandas_batches()`` / ``polars_batches()``: the remaining rows as one DataFrame per batch the database
      returns (``read_batch_size`` rows; a vector search's rows are one batch), so a large result is never held
      whole. The pandas frames are indexed consecutively: ``pd.concat`` of them equals ``to_pandas()``. polars
      types each batch's columns from its own values (a column missing in every row of a batch is of type
      ``Null``): ``pl.concat(frames, how='vertical_relaxed')`` joins them.

    Columns come in the select's order (``columns``, where the query says it), then the listener outputs of
    ``outputs()``, then ``_score`` for a vector search; a schemaless table's other fields follow as rows have them.
    Values are as in the rows: a vector is a numpy array in an object column for pandas, an array or list column
    for polars. An empty result is a frame with those columns, and no batches.
    """

    #: rows per batch when a whole result goes to one DataFrame read column by column
    FRAME_BATCH = 1 << 20

    def __init__(self, batches: Iterator[list['Document']], columns: Sequence[str] | None = None,
                 column_batches: Callable[[int | None], Iterator[list]] | None = None, plan: dict | None = None):
        self._batches = batches
        #: how a vector search found its rows (searcher, strategy, candidates checked); ``None`` for other reads
        self.plan = plan
        self._current: Iterator['Document'] = iter(())
        self.columns: list[str] | None = list(columns) if columns is not None else None
        #: the same read, column by column (``batch size -> batches of columns``; ``None``: the read's own size),
        #: taken for DataFrames while no row has been read: no ``Document`` is made
        self._column_batches = column_batches if columns is not None else None

    def __iter__(self) -> 'Cursor':
        return self

    def _columnar(self) -> Callable[[int | None], Iterator[list]] | None:
        """The column-by-column read, once: from then on the rows are read that way (the row read never starts)."""
        read, self._column_batches = self._column_batches, None
        if read is not None:
            self._batches = iter(())
        return read

    def __next__(self) -> 'Document':
        self._column_batches = None  # rows are being read: DataFrames are made from what is left of them
        while True:
            try:
                return next(self._current)
            except StopIteration:
                self._current = iter(next(self._batches))

    def __repr__(self) -> str:
        head = self._peek(6)
        shown = ', '.join(repr(row) for row in head[:5]) + (', ...' if len(head) > 5 else '')
        return f'Cursor([{shown}])'

    def _peek(self, n: int) -> list['Document']:
        """The next ``n`` rows, kept for the iteration that follows (at most a batch more is fetched)."""
        self._column_batches = None
        buffered = list(self._current)
        while len(buffered) < n:
            try:
                buffered.extend(next(self._batches))
            except StopIteration:
                break
        self._current = iter(buffered)
        return buffered[:n]

    def tolist(self) -> list['Document']:
        self._column_batches = None
        out = list(self._current)
        for batch in self._batches:
            out.extend(batch)
        return out

    def batches(self) -> Iterator[list['Document']]:
        """The remaining rows, a batch at a time."""
        self._column_batches = None
        rest = list(self._current)
        if rest:
            yield rest
        yield from self._batches

    def to_pandas(self) -> 'pandas.DataFrame':
        """The remaining rows as one pandas DataFrame."""
        pd = require('pandas', 'Cursor.to_pandas()')
        read = self._columnar()
        if read is not None:
            return pandas_from_columns(pd, self.columns or [], list(read(self.FRAME_BATCH)))
        return pandas_frame(pd, self.tolist(), self.columns)

    def to_polars(self) -> 'polars.DataFrame':
        """The remaining rows as one polars DataFrame."""
        pl = require('polars', 'Cursor.to_polars()')
        read = self._columnar()
        if read is not None:
            return polars_from_columns(pl, self.columns or [], list(read(self.FRAME_BATCH)))
        return polars_frame(pl, self.tolist(), self.columns)

    def pandas_batches(self) -> Iterator['pandas.DataFrame']:
        """The remaining rows as pandas DataFrames, one per batch fetched."""
        pd = require('pandas', 'Cursor.pandas_batches()')
        return self._frames(lambda rows, start: pandas_frame(pd, rows, self.columns, start),
                            lambda columns, start: pandas_from_columns(pd, self.columns or [], [columns], start))

    def polars_batches(self) -> Iterator['polars.DataFrame']:
        """The remaining rows as polars DataFrames, one per batch fetched."""
        pl = require('polars', 'Cursor.polars_batches()')
        return self._frames(lambda rows, start: polars_frame(pl, rows, self.columns),
                            lambda columns, start: polars_from_columns(pl, self.columns or [], [columns]))

    def _frames(self, from_rows: Callable[[list['Document'], int], Any],
                from_columns: Callable[[list, int], Any]) -> Iterator[Any]:
        start = 0
        read = self._columnar()
        if read is not None:
            for columns in read(None):
                count = len(columns[0]) if columns else 0
                if count:
                    yield from_columns(columns, start)
                    start += count
            return
        for batch in self.batches():
            if batch:
                yield from_rows(batch, start)
                start += len(batch)

    def close(self) -> None:
        close = getattr(self._batches, 'close', None)
        if close:
            close()

    def __enter__(self) -> 'Cursor':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
