"""Shared fixtures: one suite run against every SQL backend.

``db`` is parametrised over SQLite, PostgreSQL, MariaDB and DuckDB. The servers are the real ones on
127.0.0.1 (PostgreSQL: user postgres, trust auth; MariaDB: root, no password); each test session works in a
scratch database of its own on each server, emptied after every test and dropped at the end. A server that
cannot be reached skips its tests on a developer's machine and fails them in CI (``CI`` set).
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

from superduper import superduper

IN_CI = bool(os.environ.get('CI'))
SERVERS = {
    'postgresql': ('postgresql+psycopg://postgres@127.0.0.1:5432/{db}', 'postgres', 'postgresql://postgres@127.0.0.1:5432/{db}'),
    'mariadb': ('mysql+pymysql://root@127.0.0.1:3306/{db}', '', 'mysql://root@127.0.0.1:3306/{db}'),
}
BACKENDS = ['sqlite', 'postgresql', 'mariadb', 'duckdb']
SCRATCH = f'sd_test_{uuid.uuid4().hex[:8]}'


class Server:
    """A scratch database on a running server, recreated empty between tests."""

    def __init__(self, name: str):
        self.name = name
        admin_url, admin_db, uri_template = SERVERS[name] if name in SERVERS else _start_pgserver()
        self.admin = sa.create_engine(admin_url.format(db=admin_db), isolation_level='AUTOCOMMIT', poolclass=sa.pool.NullPool)
        self.uri = uri_template.format(db=SCRATCH)
        self.reset()

    def _quoted(self) -> str:
        return self.admin.dialect.identifier_preparer.quote(SCRATCH)

    def reset(self) -> None:
        with self.admin.connect() as conn:
            if self.name in ('postgresql', 'pgvector'):
                conn.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{SCRATCH}' AND pid <> pg_backend_pid()"
                )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS {self._quoted()}')
            conn.exec_driver_sql(f'CREATE DATABASE {self._quoted()}')

    def drop(self) -> None:
        with self.admin.connect() as conn:
            if self.name in ('postgresql', 'pgvector'):
                conn.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{SCRATCH}' AND pid <> pg_backend_pid()"
                )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS {self._quoted()}')
        self.admin.dispose()


def _start_pgserver() -> tuple[str, str, str]:
    """PostgreSQL 16 with pgvector from the ``pgserver`` wheel, on a Unix socket in a temporary folder (the
    machines' Debian PostgreSQL has no pgvector)."""
    import tempfile

    import pgserver

    folder = tempfile.mkdtemp(prefix='sd-pgvector-')
    uri = pgserver.get_server(folder, cleanup_mode='delete').get_uri()  # postgresql://postgres:@/postgres?host=...
    base, _, query = uri.partition('?')
    base = base.rsplit('/', 1)[0]
    return f'postgresql+psycopg://{base.split("://", 1)[1]}/{{db}}?{query}', 'postgres', f'{base}/{{db}}?{query}'


_servers: dict[str, Server | Exception] = {}


def server(name: str) -> Server:
    if name not in _servers:
        try:
            _servers[name] = Server(name)
        except (sa.exc.OperationalError, ImportError, OSError, RuntimeError) as e:
            _servers[name] = e
    found = _servers[name]
    if isinstance(found, Exception):
        message = f'{name} server not reachable on 127.0.0.1: {str(found).splitlines()[0]}'
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for found in _servers.values():
        if isinstance(found, Server):
            found.drop()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test runs in an empty folder with no SUPERDUPER_* settings from the outside."""
    for key in list(os.environ):
        if key.startswith('SUPERDUPER_'):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def backend_uri(name: str, tmp_path) -> str:
    if name == 'sqlite':
        return f'sqlite://{tmp_path}/data.db'
    if name == 'duckdb':
        return f'duckdb://{tmp_path}/data.duckdb'
    return server(name).uri


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_uri(backend, tmp_path):
    """The database of the test; a server's scratch database is emptied after it."""
    yield backend_uri(backend, tmp_path)
    if backend in SERVERS or backend == 'pgvector':
        server(backend).reset()


@pytest.fixture
def db(backend, db_uri, tmp_path):
    datalayer = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', home=str(tmp_path / 'home'))
    yield datalayer
    datalayer.close()


@pytest.fixture
def sqlite_db(tmp_path):
    datalayer = superduper(f'sqlite://{tmp_path}/data.db', artifact_store=f'filesystem://{tmp_path}/artifacts')
    yield datalayer
    datalayer.close()
