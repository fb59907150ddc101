"""Primary-key values as JSON text, for keys kept in metadata (failed rows) and in saved vector indexes.

Keys are strings and integers on SQL tables; MongoDB's ``_id`` is usually an ``ObjectId``, written here as
``{"$oid": "<hex>"}`` (MongoDB's extended JSON) and read back as an ``ObjectId``. ``bson`` is imported only when
such a key is met.
"""

from __future__ import annotations

import json
from typing import Any


def _default(value: Any) -> Any:
    if type(value).__name__ == 'ObjectId':
        return {'$oid': str(value)}
    raise TypeError(f'a primary key of type {type(value).__name__} cannot be stored: {value!r}')


def _hook(obj: dict) -> Any:
    if len(obj) == 1 and '$oid' in obj:
        from bson import ObjectId

        return ObjectId(obj['$oid'])
    return obj


def dump_key(key: Any) -> str:
    return json.dumps(key, default=_default)


def load_key(text: str) -> Any:
    return json.loads(text, object_hook=_hook)
