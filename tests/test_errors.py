"""Errors a user can act on: connection and path errors name the database (never its password) in one line, through
the API and the CLI, and looking at a database that does not exist does not create it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from superduper import superduper
from superduper.base.exceptions import ConfigError, SuperduperError

CLI = [sys.executable, '-m', 'superduper.cli']

BAD_URIS = {
    'no server on the port': ('postgresql://postgres:hunter2@127.0.0.1:5999/test', "'test' at postgres@127.0.0.1:5999"),
    'wrong password': ('mysql://root:hunter2@127.0.0.1/test', 'Access denied'),
    'unknown role': ('postgresql://nobody:hunter2@127.0.0.1/test', 'role "nobody" does not exist'),
    'no database named': ('postgresql://postgres:hunter2@127.0.0.1/', 'names no database'),
    'no database named (MySQL)': ('mysql://root:hunter2@127.0.0.1', 'names no database'),
    'unknown scheme': ('nosuch://hunter2@x/y', "unknown database scheme 'nosuch://'"),
    'not a URI': ('hunter2', 'malformed URI'),
}


@pytest.mark.parametrize('case', BAD_URIS)
def test_connection_errors_are_one_clear_line(case, tmp_path):
    uri, expected = BAD_URIS[case]
    with pytest.raises(SuperduperError) as raised:
        superduper(uri, artifact_store=f'filesystem://{tmp_path}/a')
    assert expected in str(raised.value) and 'hunter2' not in str(raised.value).replace(uri, '')
    assert 'sqlalche.me' not in str(raised.value) and '\n' not in str(raised.value)
    done = subprocess.run(CLI + ['status', uri], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0]
    assert ':hunter2@' not in done.stderr and 'Traceback' not in done.stderr


def test_the_cli_traceback_only_when_asked(tmp_path):
    uri = 'postgresql://postgres@127.0.0.1:5999/test'
    done = subprocess.run(CLI + ['status', uri, '--debug'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and 'cannot connect' in done.stderr
    plain = subprocess.run(CLI + ['show', 'sqlite:///etc/passwd/x.db'], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and len(plain.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('command', ['show', 'status', 'start'])
def test_looking_at_a_database_that_does_not_exist_does_not_create_it(command, tmp_path):
    for uri in (f'sqlite://{tmp_path}/typo.db', f'duckdb://{tmp_path}/typo.duckdb'):
        done = subprocess.run(CLI + [command, uri] + (['--once'] if command == 'start' else []),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and 'no ' in done.stderr and 'database at' in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_server_uri_without_a_database_is_refused():
    with pytest.raises(ConfigError, match='names no database'):
        superduper('postgresql://postgres@127.0.0.1')


def test_a_missing_dialect_names_the_extra_to_install(tmp_path, monkeypatch):
    import sqlalchemy as sa

    from superduper.backends.sql import base
    from superduper.base.exceptions import MissingDependency

    def no_plugin(url, **options):  # what SQLAlchemy raises when duckdb-engine is not installed
        raise sa.exc.NoSuchModuleError("Can't load plugin: sqlalchemy.dialects:duckdb")

    monkeypatch.setattr(base.sa, 'create_engine', no_plugin)
    with pytest.raises(MissingDependency, match=r"pip install 'superduper\[duckdb\]'"):
        superduper(f'duckdb://{tmp_path}/d.duckdb')
