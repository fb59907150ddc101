"""Conditions (``superduper.base.query``) as MongoDB filter documents."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from superduper.base.query import And, Compare, Condition, Not, Or

_OPERATORS = {'!=': '$ne', '<': '$lt', '<=': '$lte', '>': '$gt', '>=': '$gte'}


def to_filter(cond: Condition | None, field: Callable[[str], str] = lambda f: f) -> dict[str, Any]:
    """The filter document; ``field`` renames fields (a declared primary key is stored as ``_id``)."""
    if cond is None:
        return {}
    if isinstance(cond, Compare):
        name = field(cond.field)
        if cond.op == '==':
            # a dict value would read as operators: match it as a value
            return {name: {'$eq': cond.value}} if isinstance(cond.value, Mapping) else {name: cond.value}
        if cond.op == 'in':
            return {name: {'$in': list(cond.value)}}
        return {name: {_OPERATORS[cond.op]: cond.value}}
    if isinstance(cond, And):  # MongoDB refuses an empty $and/$or: all rows, and none
        return {'$and': [to_filter(c, field) for c in cond.parts]} if cond.parts else {}
    if isinstance(cond, Or):
        return {'$or': [to_filter(c, field) for c in cond.parts]} if cond.parts else {'_id': {'$in': []}}
    if isinstance(cond, Not):
        return {'$nor': [to_filter(cond.part, field)]}
    raise TypeError(f'not a condition: {cond!r}')
