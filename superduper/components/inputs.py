"""How a row becomes a model's input. A ``key`` says it: ``'x'`` passes ``row['x']``; ``('a', 'b')`` passes
``row['a'], row['b']`` as positional arguments; ``{'a': 'x'}`` passes ``x=row['a']`` as a keyword argument."""

from __future__ import annotations

from typing import Callable

from superduper.base.exceptions import ComponentError

Key = str | tuple | dict


def input_maker(key: Key) -> Callable[[dict], tuple[tuple, dict]]:
    """A function from a row to the ``(args, kwargs)`` that ``key`` asks for."""
    if isinstance(key, str):
        return lambda row: ((row[key],), {})
    if isinstance(key, (tuple, list)):
        fields = tuple(key)
        return lambda row: (tuple(row[f] for f in fields), {})
    if isinstance(key, dict):
        items = tuple(key.items())
        return lambda row: ((), {param: row[f] for f, param in items})
    raise ComponentError(f'a key is a field name, a tuple of names or a dict of name -> argument, got {key!r}')


def key_fields(key: Key) -> list[str]:
    if isinstance(key, str):
        return [key]
    return list(key)
