"""Shared fixtures: one suite run against every backend.

``db`` is parametrised over SQLite, PostgreSQL, MariaDB, DuckDB, mongomock and MongoDB. The SQL servers are the
real ones on 127.0.0.1 (PostgreSQL: user postgres, trust auth; MariaDB: root, no password); each test session
works in a scratch database of its own on each server, emptied after every test and dropped at the end. A server
that cannot be reached skips its tests on a developer's machine and fails them in CI (``CI`` set).

MongoDB: ``mongomock`` runs in process; a real server (for change streams and GridFS on a server) is used only
when ``SUPERDUPER_TEST_MONGODB_URI`` names one (e.g. ``mongodb://localhost:27017``), since none can be installed
on the development and CI machines.

One shared suite (as in ibis): ``BACKENDS`` below is the one list of backends, and a test asks for the ``backend``
fixture (or ``db``/``db_uri``) to run on each of them. A test narrows that only by what it means, never by a list of
its own: ``@pytest.mark.backends('sql')`` (a family in ``FAMILIES``: 'all', 'sql', 'server', 'mongo', 'any'; or one named
backend for a test of that backend itself, e.g. 'pgvector'); ``@pytest.mark.sql_only('reason')`` is
``backends('sql')`` with its reason. What a test needs from a backend it states with
``@pytest.mark.requires(field=value, reason=...)`` (or ``requires('field', ...)``: the field is truthy), read
against the ``Capabilities`` each backend declares; on a backend that does not declare it the test still runs, as a
strict expected failure, so a backend that gains the capability fails the suite (XPASS) until its declaration says
so. Skips are only for the environment (a server not reachable, no MongoDB server named).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
import uuid
from typing import Iterator

import pytest
import sqlalchemy as sa

from superduper import superduper

IN_CI = bool(os.environ.get('CI'))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = {
    'postgresql': ('postgresql+psycopg://postgres@127.0.0.1:5432/{db}', 'postgres', 'postgresql://postgres@127.0.0.1:5432/{db}'),
    'mariadb': ('mysql+pymysql://root@127.0.0.1:3306/{db}', '', 'mysql://root@127.0.0.1:3306/{db}'),
}
MONGODB_URI = os.environ.get('SUPERDUPER_TEST_MONGODB_URI')
#: a MongoDB server cannot be installed on these machines: the suite runs on one only when it is named
#: the snowflake backend on fakesnow runs the tests that name it ('fakesnow'); the whole suite only when asked
#: (SUPERDUPER_TEST_FAKESNOW=1: about 20 s a test, every statement an HTTP request to the emulator, so some 50 minutes)
FAKESNOW = bool(os.environ.get('SUPERDUPER_TEST_FAKESNOW'))
BACKENDS = (['sqlite', 'postgresql', 'mariadb', 'duckdb', 'chdb'] + (['fakesnow'] if FAKESNOW else []) + ['parquet', 'frames', 'mongomock']
            + (['mongodb'] if MONGODB_URI else []))
#: every backend the suite can run on: ``BACKENDS``, PostgreSQL with pgvector (a server of its own, started from
#: the ``pgserver`` wheel) and, unless it is in ``BACKENDS``, fakesnow: these run only the tests that name them
ALL_BACKENDS = BACKENDS + ['pgvector'] + ([] if FAKESNOW else ['fakesnow']) + ['parquet-polars', 'parquet-datafusion']
SQL_BACKENDS = ('sqlite', 'postgresql', 'mariadb', 'duckdb', 'fakesnow', 'pgvector')
#: backends that are another backend's implementation pointed at an emulator: 'fakesnow' is the snowflake backend
#: on fakesnow's server (Snowflake's SQL on DuckDB, spoken to over HTTP by the real connector and dialect)
IMPLEMENTED_BY = {'pgvector': 'postgresql', 'fakesnow': 'snowflake', 'parquet-polars': 'parquet',
                  'parquet-datafusion': 'parquet'}
#: the named groups a test may pick (``@pytest.mark.backends(...)``)
FAMILIES = {
    'all': BACKENDS,
    'sql': [b for b in BACKENDS if b in SQL_BACKENDS],  # SQLAlchemy engines: plain SQL from other clients, DDL
    'server': [b for b in BACKENDS if b in SERVERS],  # SQL servers: many connections writing at once
    'mongo': [b for b in BACKENDS if b.startswith('mongo')],
    'any': ['sqlite'],  # one database, the cheapest: for tests where which one does not matter
    # a folder on the other query engines (``parquet`` is DuckDB's): the modules of queries, listeners and results
    'engines': ['parquet-polars', 'parquet-datafusion'],
}
#: the test environment's PostgreSQL has no pgvector extension: it cannot store vectors natively (``pgvector`` can)
ENVIRONMENT = {'postgresql': {'native_vectors': False}}
SCRATCH = f'sd_test_{uuid.uuid4().hex[:8]}'
#: where an emulator differs from the database it stands for (not the backend's doing): a test that meets the
#: difference is a strict expected failure on that emulator (``emulator_gap``)
EMULATOR_GAPS = {
    ('fakesnow', 'null_timestamp'): "fakesnow's server sends a NULL TIMESTAMP_NTZ as 1970-01-01 00:00 (Snowflake "
                                    'sends NULL, as fakesnow in process does)',
    ('fakesnow', 'quote_in_name'): "fakesnow records a new table's columns with SQL that leaves a quote in the table's "
                                   'name unescaped: a parser error after the table is made (Snowflake takes the name)',
}


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


class Fakesnow:
    """fakesnow's HTTP server in a process of its own (so that workers and other clients reach it too), started once
    per test session; each test works in a database of its own on it, dropped after the test. The server runs on
    ``SUPERDUPER_TEST_FAKESNOW_PYTHON`` where that names an interpreter (a venv holding fakesnow, whose pins can
    differ from the project's: ``sqlglot~=30.22``), else on this one."""

    def __init__(self, name: str):
        import socket
        import subprocess
        import sys

        import snowflake.sqlalchemy  # noqa: F401  (not installed: the environment skips)

        python = os.environ.get('SUPERDUPER_TEST_FAKESNOW_PYTHON')
        if not python:
            import fakesnow  # noqa: F401  (not installed: the environment skips)

        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen([python or sys.executable, '-m', 'fakesnow', '-s', '--port', str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    self.process.kill()
                    raise RuntimeError(f'fakesnow server did not start on port {self.port}') from None
                time.sleep(0.2)
        self.name = name

    def uri_for(self, database: str) -> str:
        return (f'snowflake://fake:snow@fakesnow/{database}/public?warehouse=wh'
                f'&host=127.0.0.1&port={self.port}&protocol=http')

    @property
    def uri(self) -> str:
        return self.uri_for(SCRATCH)

    def drop_database(self, uri: str) -> None:
        """Nothing: fakesnow's server cannot ``DROP DATABASE`` (a parser error); its databases are in memory and go
        with it at the end of the session."""

    def reset(self) -> None:
        pass

    def drop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


_servers: dict[str, Server | Fakesnow | Exception] = {}


def server(name: str) -> Server:
    if name not in _servers:
        try:
            _servers[name] = Fakesnow(name) if name == 'fakesnow' else Server(name)
        except (sa.exc.OperationalError, ImportError, OSError, RuntimeError) as e:
            _servers[name] = e
    found = _servers[name]
    if isinstance(found, Exception):
        message = f'{name} server not reachable on 127.0.0.1: {(str(found) or repr(found)).splitlines()[0]}'
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for found in _servers.values():
        if isinstance(found, (Server, Fakesnow)):
            found.drop()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test runs in an empty folder with no SUPERDUPER_* settings from the outside."""
    for key in list(os.environ):
        if key.startswith('SUPERDUPER_') and not key.startswith('SUPERDUPER_TEST_'):
            monkeypatch.delenv(key)
    # subprocesses import this checkout, not whichever superduper is installed
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def env(tmp_path) -> dict:
    """The environment of worker and writer processes a test starts: its artifact store, no progress bars, and
    short leases (a killed process's claimed changes come free quickly)."""
    return {**os.environ, 'SUPERDUPER_ARTIFACT_STORE': f'filesystem://{tmp_path}/artifacts',
            'SUPERDUPER_PROGRESS': 'false', 'SUPERDUPER_LEASE_SECONDS': '2'}


def wait_for(condition, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, 'condition not met in time'
        time.sleep(0.05)


def wait_at_gate(gate, thread, timeout: float = 30.0) -> None:
    """Wait until the gated model running in ``thread`` has entered its gate (it wrote ``<gate>.entered``)."""
    deadline = time.time() + timeout
    while not os.path.exists(str(gate) + '.entered'):
        assert time.time() < deadline and thread.is_alive(), 'the consumer never reached the model'
        time.sleep(0.01)


def pending_changes(db) -> int:
    """Change rows waiting in the database's change log (any consumer's)."""
    with db.databackend.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.changes.tables.changes)).scalar()


def emulator_gap(request, backend: str, gap: str) -> None:
    """The test meets ``gap`` (a key of ``EMULATOR_GAPS``): on the emulator that has it, a strict expected failure."""
    reason = EMULATOR_GAPS.get((backend, gap))
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


def other_engine(db) -> sa.Engine:
    """Another client's engine on the test's database: connections of its own (with the connection arguments the
    backend gives its driver: an emulator's host and port)."""
    connect_args = db.databackend.engine_options().get('connect_args', {})
    return sa.create_engine(db.databackend.engine.url, connect_args=connect_args)


def plain_sql(db, *statements: tuple[str, dict]) -> None:
    """Another client: its own engine, plain SQL, no superduper."""
    engine = sa.create_engine(db.databackend.engine.url, **db.databackend.engine_options())
    try:
        with engine.begin() as conn:
            for sql, params in statements:
                conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


def mongodb_uri(database: str) -> str:
    """A database on the server ``SUPERDUPER_TEST_MONGODB_URI`` names; the test is skipped if none is named."""
    if not MONGODB_URI:
        pytest.skip('no MongoDB server: set SUPERDUPER_TEST_MONGODB_URI=mongodb://host:27017 to test on one')
    base, _, query = MONGODB_URI.partition('?')
    scheme, _, rest = base.partition('://')
    return f'{scheme}://{rest.split("/", 1)[0]}/{database}' + (f'?{query}' if query else '')


def backend_uri(name: str, tmp_path) -> str:
    if name == 'sqlite':
        return f'sqlite://{tmp_path}/data.db'
    if name == 'duckdb':
        return f'duckdb://{tmp_path}/data.duckdb'
    if name == 'chdb':
        return f'chdb://{tmp_path}/data.chdb'
    if name == 'parquet':
        return f'parquet://{tmp_path}/lake'
    if name.startswith('parquet-'):
        return f'parquet://{tmp_path}/lake?engine={name.split("-", 1)[1]}'
    if name == 'frames':
        return 'frames://'  # no URI opens them: the ``db`` fixture gives superduper() a dict of DataFrames
    if name == 'mongomock':
        return f'mongomock://{SCRATCH}_{uuid.uuid4().hex[:8]}'
    if name == 'mongodb':
        return mongodb_uri(f'{SCRATCH}_{uuid.uuid4().hex[:8]}')
    if name == 'fakesnow':
        return server(name).uri_for(f'{SCRATCH}_{uuid.uuid4().hex[:8]}')
    return server(name).uri


def drop_mongo_database(uri: str) -> None:
    from superduper.backends.mongodb.connection import connect, database_name

    found = connect(uri)
    found.client.drop_database(database_name(uri))
    if not found.is_mock:
        found.client.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'restarts_server: the test restarts its database server (no other test uses '
                                       'that server meanwhile)')
    config.addinivalue_line('markers', "backends(*names): the backends a test runs on: families of FAMILIES ('all', "
                                       "'sql', 'server', 'mongo', 'any') or named backends (default: all of BACKENDS)")


def backends_for(node) -> list[str]:
    """The backends a test runs on: the families and names of its closest ``backends`` or ``sql_only`` mark
    (``sql_only``: 'sql'), every one of ``BACKENDS`` without."""
    # the closest of the two marks decides: a test's own sql_only overrides its module's backends mark
    marker = next((m for m in node.iter_markers() if m.name in ('backends', 'sql_only')), None)
    if marker is not None and marker.name == 'sql_only':
        return FAMILIES['sql']
    chosen: list[str] = []
    for name in marker.args if marker is not None else ('all',):
        if name not in FAMILIES and name not in ALL_BACKENDS:
            raise ValueError(f'unknown backend or family {name!r}: one of {sorted(FAMILIES)} or {ALL_BACKENDS}')
        chosen += [b for b in FAMILIES.get(name, [name]) if b not in chosen]
    return chosen


_capabilities: dict = {}


def declared_capabilities(backend: str):
    """What ``backend`` declares (``superduper.backends.base.Capabilities``), as the suite connects to it (a file,
    a scratch database), without connecting; with what the test environment lacks (``ENVIRONMENT``) taken away."""
    import dataclasses

    if backend not in _capabilities:
        from superduper.backends.registry import data_backends

        if backend == 'mongomock':  # declared per instance: an in-process client, cheap to make
            found = data_backends.create('mongomock', 'mongomock://sd_capabilities').capabilities
        else:
            found = data_backends.load(IMPLEMENTED_BY.get(backend, backend)).capabilities
        _capabilities[backend] = dataclasses.replace(found, **ENVIRONMENT.get(backend, {}))
    return _capabilities[backend]


def missing_capabilities(node, backend: str) -> list[str]:
    """The reasons of the ``requires`` marks ``backend`` does not declare."""
    capabilities = declared_capabilities(backend)
    missing = []
    for marker in node.iter_markers('requires'):
        wanted = [f'{k}={v!r}' for k, v in marker.kwargs.items() if k != 'reason' and getattr(capabilities, k) != v]
        wanted += [k for k in marker.args if not getattr(capabilities, k)]
        if wanted:
            missing.append(f'{backend} does not declare {", ".join(wanted)}: {marker.kwargs["reason"]}')
    return missing


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs every test that asks for ``backend`` on the backends it picks; where one of them does not declare what
    the test ``requires``, the test is a strict expected failure there."""
    if 'backend' not in metafunc.fixturenames:
        return
    params = []
    for backend in backends_for(metafunc.definition):
        missing = missing_capabilities(metafunc.definition, backend)
        marks = [pytest.mark.xfail(reason='; '.join(missing), strict=True)] if missing else []
        params.append(pytest.param(backend, marks=marks, id=backend))
    metafunc.parametrize('backend', params, scope='function')


@contextlib.contextmanager
def server_in_use(backend: str, exclusive: bool) -> Iterator[None]:
    """While a test uses a server of the machine's (PostgreSQL, MariaDB), one that restarts it waits for every other
    test on it, in any worker or test session, and they wait for it: a lock file per server, shared or exclusive."""
    if backend not in SERVERS:
        yield
        return
    fd = os.open(os.path.join(tempfile.gettempdir(), f'superduper-test-{backend}.lock'), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


@pytest.fixture(scope='session')
def pglite():
    """PostgreSQL with pgvector 0.8 for the session (PGlite's, served by pglite-server: ``pglite_server``; pgserver's
    has 0.6.2). Without Node.js or the packages ``python tests/pglite_server.py setup`` installs, its tests are
    skipped on a developer's machine and fail in CI."""
    import pglite_server

    reason = pglite_server.missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    found = pglite_server.Server()
    yield found
    found.stop()


@pytest.fixture
def pglite_uri(pglite):
    """The PGlite server's one database, emptied after the test."""
    yield pglite.uri
    with pglite.connect(autocommit=True) as conn:
        conn.execute('DROP SCHEMA public CASCADE')  # the vector extension too: superduper creates it again
        conn.execute('CREATE SCHEMA public')


@pytest.fixture
def pglite_db(pglite_uri, tmp_path):
    """superduper on the PGlite server's one database (pgvector 0.8)."""
    datalayer = superduper(pglite_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', home=str(tmp_path / 'home'),
                           progress=False)
    yield datalayer
    datalayer.close()


@pytest.fixture
def db_uri(backend, tmp_path, request):
    """The database of the test; a server's scratch database is emptied after it. A test marked
    ``restarts_server`` has its server to itself."""
    with server_in_use(backend, exclusive=request.node.get_closest_marker('restarts_server') is not None):
        uri = backend_uri(backend, tmp_path)
        yield uri
        if backend in SERVERS or backend == 'pgvector':
            server(backend).reset()
    if backend == 'fakesnow':
        server(backend).drop_database(uri)
    if backend in ('mongomock', 'mongodb'):
        drop_mongo_database(uri)


@pytest.fixture
def pk(backend) -> str:
    """The primary key field of a ``Table`` that does not declare one: ``id`` on SQL, ``_id`` on MongoDB."""
    return '_id' if backend in ('mongomock', 'mongodb') else 'id'


@pytest.fixture
def db(backend, db_uri, tmp_path):
    datalayer = superduper({} if backend == 'frames' else db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', home=str(tmp_path / 'home'))
    yield datalayer
    datalayer.close()


@pytest.fixture
def sqlite_db(tmp_path):
    datalayer = superduper(f'sqlite://{tmp_path}/data.db', artifact_store=f'filesystem://{tmp_path}/artifacts')
    yield datalayer
    datalayer.close()


#: the checkout's root: clusters started from here have worker processes importing this superduper
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_CPUS = 4  # logical CPUs: a test's client (2 actors) and another process's client (2 more) at once


def in_checkout(start):
    """Start a cluster from the checkout, so its worker processes import this superduper."""
    here = os.getcwd()
    os.chdir(CHECKOUT)
    try:
        return start()
    finally:
        os.chdir(here)


@pytest.fixture(scope='session')
def ray_instance() -> Iterator[str]:
    """One local Ray instance per test process (Ray is one per process), shared by every module that uses it:
    offline, no dashboard, a capped object store. Yields its GCS address."""
    pytest.importorskip('ray')
    os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')
    import ray

    in_checkout(lambda: ray.init(num_cpus=RAY_CPUS, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
                                 log_to_driver=False))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
