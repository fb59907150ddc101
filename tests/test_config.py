"""Connecting: configuration precedence, the embedded default, URI forms and their errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from superduper import superduper
from superduper.compute.local import LocalComputeBackend
from superduper.backends.sql.sqlite import SQLiteDataBackend
from superduper.base.config import Config
from superduper.base.exceptions import ConfigError, MissingDependency


def test_embedded_default_needs_no_server(tmp_path):
    db = superduper()
    assert isinstance(db.databackend, SQLiteDataBackend)
    assert isinstance(db.compute, LocalComputeBackend)
    assert os.path.isfile(tmp_path / '.superduper' / 'data.db')
    assert db.artifact_store.root == str(tmp_path / '.superduper' / 'artifacts')
    assert db.metadata.engine is db.databackend.engine  # metadata in the same database by default
    db.close()


def test_precedence_argument_then_environment_then_yaml(tmp_path, monkeypatch):
    (tmp_path / 'superduper.yaml').write_text(
        'data_backend: sqlite://from_yaml.db\nartifact_store: filesystem://yaml_artifacts\nread_batch_size: 7\n'
    )
    assert Config().data_backend == 'sqlite://from_yaml.db'
    assert Config().read_batch_size == 7
    monkeypatch.setenv('SUPERDUPER_DATA_BACKEND', 'sqlite://from_env.db')
    assert Config().data_backend == 'sqlite://from_env.db'
    assert Config().artifact_store == 'filesystem://yaml_artifacts'
    db = superduper('sqlite://from_arg.db', read_batch_size=3)
    assert db.cfg.data_backend == 'sqlite://from_arg.db' and db.cfg.read_batch_size == 3
    assert db.cfg.artifact_store == 'filesystem://yaml_artifacts'
    assert os.path.isfile(tmp_path / 'from_arg.db') and not os.path.exists(tmp_path / 'from_env.db')
    db.close()


def test_sqlite_uri_forms(tmp_path):
    absolute = tmp_path / 'abs' / 'x.db'
    for uri, expected in [('sqlite://rel.db', tmp_path / 'rel.db'), (f'sqlite://{absolute}', absolute),
                          (f'sqlite:///{absolute}', absolute)]:
        db = superduper(uri)
        db.close()
        assert os.path.isfile(expected), uri
    memory = superduper('sqlite://:memory:', artifact_store='memory://test-mem')
    from superduper import Table

    memory.apply(Table('t', fields={'x': 'int'}))
    memory['t'].insert([{'x': 1}]).execute()
    assert memory['t'].count().execute() == 1
    memory.close()


def test_separate_metadata_store(tmp_path):
    db = superduper('sqlite://data.db', metadata_store='sqlite://meta.db')
    from superduper import Table

    db.apply(Table('t', fields={'x': 'int'}))
    assert db.metadata.engine is not db.databackend.engine
    assert 't' in db.databackend.table_names()
    assert '_superduper_components' not in db.databackend.table_names()
    assert db.show('Table') == ['t']
    db.close()


def test_overrides_are_validated():
    with pytest.raises(Exception, match='read_batch_size'):
        superduper('sqlite://x.db', read_batch_size=0)
    with pytest.raises(Exception, match='not_a_setting'):
        superduper('sqlite://x.db', not_a_setting=1)


def test_malformed_and_unknown_uris():
    with pytest.raises(ConfigError, match="malformed URI 'localhost:5432'"):
        superduper('localhost:5432')
    with pytest.raises(ConfigError, match=r"unknown database scheme 'foo://'.*postgresql://.*sqlite://"):
        superduper('foo://bar')
    with pytest.raises(ConfigError, match="artifact store 'nosuchproto://x'"):
        superduper('sqlite://x.db', artifact_store='nosuchproto://x')
    with pytest.raises(ConfigError, match="unknown compute scheme 'slurm://'"):
        superduper('sqlite://x.db', compute='slurm://head:6817')


def test_missing_driver_names_scheme_and_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'psycopg', None)  # as if psycopg were not installed
    with pytest.raises(MissingDependency, match=r"'postgres://' needs the psycopg package.*pip install 'superduper\[postgres\]'"):
        superduper('postgres://postgres@127.0.0.1/test')
    monkeypatch.setitem(sys.modules, 'pymysql', None)
    with pytest.raises(MissingDependency, match=r"superduper\[mysql\]"):
        superduper('mysql://root@127.0.0.1/test')
    monkeypatch.setitem(sys.modules, 'snowflake.sqlalchemy', None)
    monkeypatch.delitem(sys.modules, 'superduper.backends.sql.snowflake', raising=False)
    with pytest.raises(MissingDependency, match=r"'snowflake://' needs the snowflake-sqlalchemy package.*"
                                                r"pip install 'superduper\[snowflake\]'"):
        superduper('snowflake://user:password@account/db/public')


def test_bad_snowflake_uris_name_what_is_missing():
    pytest.importorskip('snowflake.sqlalchemy', reason='the snowflake extra is not installed')
    usage = r'snowflake://user:password@<account>/<database>/<schema>'
    with pytest.raises(ConfigError, match=r"'snowflake:///db/public' names no Snowflake account; write " + usage):
        superduper('snowflake:///db/public')
    with pytest.raises(ConfigError, match=r"'snowflake://u:\*\*\*@acct' names no database; write " + usage):
        superduper('snowflake://u:secret@acct')
    with pytest.raises(ConfigError, match=r"the path is <database>/<schema>, not 'a/b/c'"):
        superduper('snowflake://u:p@acct/a/b/c')
    with pytest.raises(ConfigError, match=r"port 'x' is not a number"):
        superduper('snowflake://u:p@acct/db/s?host=127.0.0.1&port=x')


def test_other_sqlalchemy_urls_pass_through(tmp_path):
    db = superduper(f'sqlite+pysqlite:///{tmp_path}/through.db')
    assert type(db.databackend).__name__ == 'SQLDataBackend'
    from superduper import Table

    db.apply(Table('t', fields={'x': 'int'}))
    assert db['t'].insert([{'x': 5}]).execute()
    db.close()
    with pytest.raises(MissingDependency, match=r"'mssql\+pyodbc://' needs the pyodbc package"):
        superduper('mssql+pyodbc://user@host/db')


def test_import_is_light():
    code = (
        'import sys, superduper\n'
        "heavy = [m for m in ('sqlalchemy', 'numpy', 'pandas', 'torch', 'pydantic', 'psycopg', 'pymysql', 'duckdb') "
        'if m in sys.modules]\n'
        'print(heavy)'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'
