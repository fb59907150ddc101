"""Primary-key values as JSON text, for keys kept in metadata (failed rows) and in saved vector indexes.

Keys are strings and integers on most SQL tables; a UUID key is written ``{"$uuid": "<text>"}`` and read back as a
``uuid.UUID``; MongoDB's ``_id`` is usually an ``ObjectId``, written ``{"$oid": "<hex>"}`` (MongoDB's extended JSON)
and read back as an ``ObjectId``. A composite key is a JSON array. ``bson`` is imported only when such a key is met.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


def _default(value: Any) -> Any:
    if type(value).__name__ == 'ObjectId':
        return {'$oid': str(value)}
    if isinstance(value, uuid.UUID):
        return {'$uuid': str(value)}
    raise TypeError(f'a primary key of type {type(value).__name__} cannot be stored: {value!r}')


def _hook(obj: dict) -> Any:
    if len(obj) == 1 and '$oid' in obj:
        from bson import ObjectId

        return ObjectId(obj['$oid'])
    if len(obj) == 1 and '$uuid' in obj:
        return uuid.UUID(obj['$uuid'])
    return obj


def dump_key(key: Any) -> str:
    return json.dumps(key, default=_default)


def load_key(text: str) -> Any:
    """The key ``dump_key`` wrote; a composite key (a JSON array) comes back as a tuple."""
    key = json.loads(text, object_hook=_hook)
    return tuple(key) if isinstance(key, list) else key
