"""Which module implements each URI scheme, for data, metadata, artifacts and compute.

Nothing here imports a driver: a scheme's module is imported when a URI with that scheme is first used, and
a missing driver becomes one ``MissingDependency`` error naming the extra to install.
"""

from __future__ import annotations

import os
from typing import Any

from superduper.base.exceptions import ConfigError, MissingDependency
from superduper.base.registry import Registry

data_backends = Registry('database')
data_backends.register('sqlite', 'superduper.backends.sql.sqlite:SQLiteDataBackend')
for _scheme in ('postgresql', 'postgres'):
    data_backends.register(_scheme, 'superduper.backends.sql.postgres:PostgresDataBackend', 'postgres', 'psycopg')
for _scheme in ('mysql', 'mariadb'):
    data_backends.register(_scheme, 'superduper.backends.sql.mysql:MySQLDataBackend', 'mysql', 'pymysql')
data_backends.register('duckdb', 'superduper.backends.sql.duckdb:DuckDBDataBackend', 'duckdb', 'duckdb-engine')
data_backends.register('snowflake', 'superduper.backends.sql.snowflake:SnowflakeDataBackend', 'snowflake',
                       'snowflake-sqlalchemy')
data_backends.register('chdb', 'superduper.backends.sql.clickhouse:ChdbDataBackend', 'clickhouse', 'chdb')
for _scheme in ('clickhouse', 'clickhouses'):
    data_backends.register(_scheme, 'superduper.backends.sql.clickhouse:ClickHouseDataBackend', 'clickhouse',
                           'clickhouse_connect')
data_backends.register('trino', 'superduper.backends.sql.trino:TrinoDataBackend', 'trino', 'trino')
data_backends.register('mssql', 'superduper.backends.sql.mssql:MSSQLDataBackend', 'mssql', 'pymssql')
# the other driver SQL Server's dialect takes: its own package, named in the error when missing
data_backends.register('mssql+pyodbc', 'superduper.backends.sql.mssql:MSSQLDataBackend', None, 'pyodbc')
data_backends.register('oracle', 'superduper.backends.sql.oracle:OracleDataBackend', 'oracle', 'oracledb')
data_backends.register('druid', 'superduper.backends.sql.druid:DruidDataBackend', 'druid', 'pydruid')
data_backends.register('bigquery', 'superduper.backends.sql.bigquery:BigQueryDataBackend', 'bigquery',
                       'sqlalchemy-bigquery')
data_backends.register('impala', 'superduper.backends.sql.impala:ImpalaDataBackend', 'impala', 'impyla')
data_backends.register('parquet', 'superduper.backends.lake.data_backend:LakeDataBackend', 'lake', 'deltalake')
# in-memory DataFrames: ``superduper({'orders': df})`` (``data_backend_of``), not opened by URI
data_backends.register('frames', 'superduper.backends.lake.data_backend:FramesDataBackend', 'lake', 'ibis')
data_backends.register('mongodb', 'superduper.backends.mongodb.data_backend:MongoDataBackend', 'mongodb', 'pymongo')
data_backends.register('mongomock', 'superduper.backends.mongodb.data_backend:MongoDataBackend', 'mongomock', 'mongomock')
#: any other SQLAlchemy URL (``firebird://``, ``postgresql+psycopg2://`` ...) goes to the generic backend
data_backends.register('sqlalchemy', 'superduper.backends.sql.base:SQLDataBackend')

#: artifact stores kept in a database; any other scheme is an fsspec protocol (``superduper.backends.artifacts``)
artifact_stores = Registry('artifact store')
for _scheme in ('mongodb', 'mongodb+srv'):
    artifact_stores.register(_scheme, 'superduper.backends.mongodb.artifacts:MongoArtifactStore', 'mongodb', 'pymongo')
artifact_stores.register('mongomock', 'superduper.backends.mongodb.artifacts:MongoArtifactStore', 'mongomock', 'mongomock')

compute_backends = Registry('compute')
compute_backends.register('local', 'superduper.compute.local:LocalComputeBackend')
compute_backends.register('dask', 'superduper.compute.dask:DaskComputeBackend', 'dask', 'dask[distributed]')
compute_backends.register('ray', 'superduper.compute.ray:RayComputeBackend', 'ray', 'ray')


def scheme_of(uri: str) -> str:
    if not isinstance(uri, str) or '://' not in uri:
        raise ConfigError(f"malformed URI {uri!r}: expected '<scheme>://...', e.g. 'sqlite://my.db'")
    return uri.split('://', 1)[0].lower()


def _data_scheme(uri: str) -> str:
    scheme = scheme_of(uri)
    if scheme in data_backends:
        return scheme
    base, _, driver = scheme.partition('+')
    if base in data_backends and (not driver or base not in ('sqlite', 'duckdb')):
        return base
    return _sqlalchemy_scheme(uri, scheme)


def _sqlalchemy_scheme(uri: str, scheme: str) -> str:
    """Accept any URL SQLAlchemy has a dialect for; otherwise say which schemes exist."""
    import sqlalchemy as sa

    try:
        sa.engine.make_url(uri).get_dialect()
    except (sa.exc.NoSuchModuleError, sa.exc.ArgumentError):
        known = ', '.join(f'{s}://' for s in data_backends.schemes() if s != 'sqlalchemy')
        raise ConfigError(
            f"unknown database scheme '{scheme}://' in {uri!r}; known: {known}, or any SQLAlchemy URL "
            'whose dialect is installed'
        ) from None
    except ImportError:
        pass  # the dialect exists, its driver does not: reported when connecting
    return 'sqlalchemy'


#: the columns of the capability table: (heading, what a backend class declares)
CAPABILITY_COLUMNS = (
    ('other clients\' writes', lambda c: {'triggers': 'triggers', 'change_stream': 'change stream',
                                          'polling': 'polling', 'versions': 'table versions'}.get(c.change_capture,
                                                                                                 'not seen')),
    ('transactions', lambda c: 'yes' if c.transactions else 'no'),
    ('upsert', lambda c: 'yes' if c.upsert else 'no'),
    ('vectors searched in the database', lambda c: 'yes' if c.native_vectors else 'no'),
    ('several processes', lambda c: 'yes' if c.shared else 'no'),
)


def capability_table() -> str:
    """A Markdown table of what each kind of database declares (one row per implementation, its first scheme),
    and what the project's tests run it against; a backend whose driver is not installed says how to install it."""
    heading = ['URI', *[name for name, _ in CAPABILITY_COLUMNS], 'tested against']
    lines = ['| ' + ' | '.join(heading) + ' |', '|' + '---|' * len(heading)]
    seen: set[str] = set()
    for scheme in data_backends.schemes():
        impl = data_backends.get(scheme)
        if impl.path in seen or scheme == 'sqlalchemy':
            continue
        seen.add(impl.path)
        try:
            cls = data_backends.load(scheme)
        except MissingDependency as e:
            lines.append(f'| `{scheme}://` | ' + ' | '.join(['?'] * len(CAPABILITY_COLUMNS)) + f' | {e} |')
            continue
        cells = [show(cls.capabilities) for _, show in CAPABILITY_COLUMNS]
        label = getattr(cls, 'label', None) or f'`{getattr(cls, "scheme", scheme)}://`'
        lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {cls.tested} |')
    return '\n'.join(lines)


def connect_data_backend(uri: str, session: Any = None) -> Any:
    """The data backend of ``uri``; ``session`` is a running engine for a folder's queries (``parquet://``: a
    ``SparkSession``, a DuckDB connection or a DataFusion ``SessionContext``)."""
    scheme = _data_scheme(uri)
    if session is None:
        return data_backends.create(scheme, uri, shown_as=scheme_of(uri))
    if scheme != 'parquet':
        raise ConfigError(f'session= is a running query engine for parquet:// folders; {scheme_of(uri)}:// takes none')
    return data_backends.create(scheme, uri, session, shown_as=scheme_of(uri))


def data_backend_of(database: Any) -> Any | None:
    """A data backend over a driver's database object (a pymongo ``Database``) or over DataFrames (a dict of table
    name to pandas or Polars DataFrame), or ``None`` if it is neither."""
    if isinstance(database, dict):
        return data_backends.load('frames')(database)
    from superduper.backends.mongodb.connection import from_database, is_database

    if not is_database(database):
        return None
    from superduper.backends.mongodb.data_backend import MongoDataBackend

    return MongoDataBackend(*from_database(database))


def missing_database(uri: str) -> str | None:
    """Why ``uri`` names no existing database (connecting would create it), or ``None``."""
    return data_backends.load(_data_scheme(uri)).missing(uri)


def connect_artifact_store(uri: str, cache_dir: str) -> Any:
    scheme = uri.split('://', 1)[0].lower() if isinstance(uri, str) and '://' in uri else ''
    if scheme in artifact_stores:
        return artifact_stores.create(scheme, uri, cache_dir)
    from superduper.backends.artifacts import ArtifactStore

    return ArtifactStore(uri, cache_dir=cache_dir)


def connect_compute(uri: str, cfg: Any = None, databackend: Any = None) -> Any:
    """The compute backend for ``uri`` ('local', 'dask://...', 'ray://...'); ``cfg`` tells remote workers how to
    connect, and a distributed backend refuses a ``databackend`` other processes cannot open."""
    scheme = uri.split('://', 1)[0].lower() if '://' in uri else uri
    return compute_backends.create(scheme, uri, cfg, databackend)


def shareable_store_uri(uri: str, base_dir: str) -> str:
    """An artifact store's URI as another process reaches the same store (a folder made absolute from
    ``base_dir``); ``ConfigError`` for the in-memory store, which only this process sees."""
    scheme = scheme_of(uri)
    if scheme == 'memory':
        raise ConfigError(f'the in-memory artifact store {uri!r} lives in this process only')
    if scheme == 'filesystem':
        return 'filesystem://' + os.path.normpath(os.path.join(base_dir, uri[len('filesystem://') :]))
    return uri


def shareable_uri(uri: str, base_dir: str) -> str:
    """``uri`` as another process started elsewhere opens the same database (relative paths made absolute from
    ``base_dir``); ``ConfigError`` if no other process can open it."""
    return data_backends.load(_data_scheme(uri)).shareable_uri(uri, base_dir)
