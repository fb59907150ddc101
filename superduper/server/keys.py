"""API keys of the server: made and revoked with ``superduper apikey``, checked on every request.

A key is ``sdk_<id>_<secret>``: the id finds its row in the metadata (table ``_superduper_api_keys``), which holds the
SHA-256 of the secret, never the key itself (the secret is 256 random bits, so a plain hash cannot be reversed by
guessing). Each key has one scope; a scope includes the ones below it: ``read`` < ``write`` < ``admin``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from superduper.backends.base import API_KEYS
from superduper.base.exceptions import ConfigError, NotFound

SCOPES = ('read', 'write', 'admin')
PREFIX = 'sdk'
#: seconds a checked key is believed without asking the metadata again: a revoked key stops working within this
CHECKED_FOR = 2.0


@dataclass(frozen=True)
class Caller:
    """Who made a request: the key's id and name (``None`` for an anonymous caller) and its scope."""

    key_id: str | None
    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ConfigError(f'unknown scope {scope!r}; scopes: {", ".join(SCOPES)}')
    return scope


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class ApiKeys:
    """The API keys kept in a metadata store's records."""

    def __init__(self, metadata: Any):
        self.records = metadata.records
        self._checked: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, scope: str) -> str:
        """A new key with ``scope``; the only time the key itself is seen (only its hash is stored)."""
        check_scope(scope)
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise ConfigError(f'an API key needs a name of 1 to 255 characters, got {name!r}')
        key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
        self.records.insert(API_KEYS, {'id': key_id, 'name': name, 'digest': _digest(secret), 'scope': scope,
                                       'created_at': _now(), 'revoked_at': None})
        return f'{PREFIX}_{key_id}_{secret}'

    def list(self) -> list[dict]:
        """Every key's id, name, scope and dates (never a secret or its hash)."""
        rows = self.records.find(API_KEYS, {}, order_by='created_at')
        return [{k: r[k] for k in ('id', 'name', 'scope', 'created_at', 'revoked_at')} for r in rows]

    def revoke(self, key_id: str) -> None:
        rows = self.records.find(API_KEYS, {'id': key_id})
        if not rows:
            known = ', '.join(r['id'] for r in self.list()) or 'none'
            raise NotFound(f'no API key with id {key_id!r}; ids: {known}')
        if rows[0]['revoked_at'] is None:
            self.records.update(API_KEYS, {'id': key_id}, {'revoked_at': _now()})
        with self._lock:
            self._checked.clear()

    def checked(self, key: str) -> Caller | None:
        """Who ``key`` belongs to if that was checked in the last ``CHECKED_FOR`` seconds (no database read)."""
        with self._lock:
            cached = self._checked.get(key)
        return cached[1] if cached is not None and time.monotonic() - cached[0] < CHECKED_FOR else None

    def caller(self, key: str) -> Caller | None:
        """Who ``key`` belongs to, or ``None`` if it is not a live key."""
        prefix, _, rest = key.partition('_')
        key_id, _, secret = rest.partition('_')
        if prefix != PREFIX or not key_id or not secret or len(key) > 200:
            return None
        now = time.monotonic()
        if (found := self.checked(key)) is not None:
            return found
        rows = self.records.find(API_KEYS, {'id': key_id})
        if not rows or rows[0]['revoked_at'] is not None or not hmac.compare_digest(rows[0]['digest'], _digest(secret)):
            return None
        found = Caller(key_id, rows[0]['name'], rows[0]['scope'])
        with self._lock:
            if len(self._checked) > 10_000:
                self._checked.clear()
            self._checked[key] = (now, found)
        return found
