"""Conditions of the query model (``superduper.base.query``) as SQLAlchemy expressions."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from superduper.base.query import And, Compare, Condition, KeysIn, Not, Or


def where_clause(table: sa.Table, cond: Condition) -> Any:
    """``cond`` as an expression on ``table``'s columns."""
    if isinstance(cond, KeysIn):
        if not cond.values:
            return sa.false()
        return sa.tuple_(*[table.c[f] for f in cond.fields_]).in_([tuple(v) for v in cond.values])
    if isinstance(cond, Compare):
        return _compare(table.c[cond.field], cond.op, cond.value)
    if isinstance(cond, And):
        return sa.and_(*[where_clause(table, c) for c in cond.parts])
    if isinstance(cond, Or):
        return sa.or_(*[where_clause(table, c) for c in cond.parts])
    if isinstance(cond, Not):
        return sa.not_(where_clause(table, cond.part))
    raise TypeError(f'not a condition: {cond!r}')


def _compare(col: Any, op: str, value: Any) -> Any:
    if op == '==':
        return col.is_(None) if value is None else col == value
    if op == '!=':
        return col.is_not(None) if value is None else col != value
    if op == 'in':
        return col.in_(list(value))
    return {'<': col.__lt__, '<=': col.__le__, '>': col.__gt__, '>=': col.__ge__}[op](value)
