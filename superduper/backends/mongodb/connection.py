"""MongoDB URIs and clients: ``mongodb://``/``mongodb+srv://`` through pymongo, ``mongomock://`` in process.

``mongomock://<database>`` (or ``mongomock://host/<database>``) reaches one in-memory server per process, so the
data backend, the metadata store and a GridFS artifact store given the same URI see the same data, as they would
on a real server.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

from superduper.base.exceptions import ConfigError, DatabaseError

SCHEMES = ('mongodb', 'mongodb+srv', 'mongomock')
SERVER_TIMEOUT_MS = 5000  # a wrong host fails in seconds, not pymongo's 30
_mock_client: Any = None
_mock_lock = threading.Lock()


@dataclass
class Connection:
    client: Any
    database: Any  # pymongo (or mongomock) Database
    is_mock: bool


def redact(uri: str) -> str:
    """The URI without its password."""
    return re.sub(r'(://[^:/@]*):[^@/]*@', r'\1:***@', uri)


def database_name(uri: str) -> str:
    scheme, _, rest = uri.partition('://')
    rest = rest.split('?', 1)[0]
    if scheme == 'mongomock':
        host, _, path = rest.partition('/')
        name = path.strip('/') or host
    else:
        name = rest.partition('/')[2].strip('/')
    name = urllib.parse.unquote(name)
    if not name:
        raise ConfigError(
            f'MongoDB URI {redact(uri)!r} names no database; expected e.g. '
            "'mongodb://localhost:27017/documents' or 'mongomock://test'"
        )
    if re.search(r'[/\\. "$]', name):
        raise ConfigError(f'MongoDB URI {redact(uri)!r}: {name!r} is not a valid database name')
    return name


def connect(uri: str) -> Connection:
    """A client and database for ``uri``; a server that cannot be reached raises ``DatabaseError`` at once."""
    scheme = uri.partition('://')[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"not a MongoDB URI: {redact(uri)!r}; expected mongodb://, mongodb+srv:// or mongomock://")
    name = database_name(uri)
    if scheme == 'mongomock':
        client = mock_client()
        return Connection(client, client[name], is_mock=True)
    import pymongo
    import pymongo.errors

    options = {} if 'serverselectiontimeoutms' in uri.lower() else {'serverSelectionTimeoutMS': SERVER_TIMEOUT_MS}
    try:
        client = pymongo.MongoClient(uri, **options)
        client.admin.command('ping')
    except pymongo.errors.ConfigurationError as e:
        raise ConfigError(f'cannot use MongoDB URI {redact(uri)!r}: {e}') from e
    except pymongo.errors.PyMongoError as e:
        raise DatabaseError(f'cannot reach MongoDB at {redact(uri)}: {str(e).splitlines()[0][:300]}') from e
    return Connection(client, client[name], is_mock=False)


def is_database(obj: Any) -> bool:
    """Whether ``obj`` is a pymongo or mongomock ``Database`` (checked without importing either)."""
    cls = type(obj)
    return cls.__name__ == 'Database' and cls.__module__.split('.', 1)[0] in ('pymongo', 'mongomock')


def from_database(database: Any) -> tuple[str, Connection]:
    """Seed 002's ``superduper(pymongo.MongoClient().my_db)``: a URI naming the database (for messages and for
    settings; it holds no credentials) and the connection the caller made."""
    if type(database).__module__.startswith('mongomock'):
        import mongomock.gridfs

        mongomock.gridfs.enable_gridfs_integration()
        return f'mongomock://{database.name}', Connection(database.client, database, is_mock=True)
    import pymongo.errors

    try:
        database.client.admin.command('ping')
        host, port = database.client.address
    except pymongo.errors.PyMongoError as e:
        raise DatabaseError(f'cannot reach MongoDB for database {database.name!r}: {str(e).splitlines()[0][:300]}') from e
    return f'mongodb://{host}:{port}/{database.name}', Connection(database.client, database, is_mock=False)


def mock_client() -> Any:
    """The process's in-memory MongoDB server (mongomock), with GridFS working on it."""
    global _mock_client
    with _mock_lock:
        if _mock_client is None:
            import mongomock
            import mongomock.gridfs

            mongomock.gridfs.enable_gridfs_integration()
            _mock_client = mongomock.MongoClient()
        return _mock_client
