"""The README's Python blocks run as written, in order, on the embedded default, in a fresh folder. A block marked
``<!-- needs a server -->`` on the line before it is skipped (it connects to PostgreSQL, MongoDB, an API ...)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / 'README.md'
BLOCK = re.compile(r'(<!-- needs a server -->\n)?```python\n(.*?)```', re.S)


def blocks() -> list[tuple[int, bool, str]]:
    return [(i, bool(m.group(1)), m.group(2)) for i, m in enumerate(BLOCK.finditer(README.read_text()))]


def test_the_readme_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('SUPERDUPER_CONFIG', raising=False)
    namespace: dict = {'__name__': 'readme'}
    ran = 0
    try:
        for i, needs_server, code in blocks():
            if needs_server:
                continue
            try:
                exec(compile(code, f'README.md python block {i}', 'exec'), namespace)
            except Exception as e:
                pytest.fail(f'README python block {i} fails: {type(e).__name__}: {e}\n{code}')
            ran += 1
    finally:
        for value in list(namespace.values()):
            if type(value).__name__ == 'Datalayer':
                value.close()
    assert ran >= 6


def test_cursors_and_documents_read_well(tmp_path):
    from superduper import Table, superduper

    db = superduper(f'sqlite://{tmp_path}/d.db', artifact_store=f'filesystem://{tmp_path}/a', progress=False)
    db.apply(Table('t', fields={'n': 'int'}, folds=False))
    db['t'].insert([{'id': str(i), 'n': i} for i in range(8)]).execute()
    cursor = db['t'].select('n').execute()
    assert repr(cursor) == "Cursor([Document({'n': 0}), Document({'n': 1}), Document({'n': 2}), Document({'n': 3}), " \
                           "Document({'n': 4}), ...])"
    assert [r['n'] for r in cursor] == list(range(8))  # showing it took nothing away
    db.close()


@pytest.mark.parametrize('example', ['sklearn_training.py', 'torch_model.py'])
def test_examples_can_be_run_twice(example, tmp_path):
    import subprocess
    import sys

    script = README.parent / 'examples' / example
    outputs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**__import__('os').environ, 'SUPERDUPER_PROGRESS': 'false'})
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    if example == 'sklearn_training.py':  # the same rows, not twice as many
        assert outputs[0].splitlines()[-1] == outputs[1].splitlines()[-1] == 'predictions kept next to the data: 301 rows'


def test_the_capability_table_is_what_the_backends_declare():
    """The README's table (between the capabilities markers) has a row for every kind of database, and each row of a
    backend installed here says what that backend declares (``superduper backends`` prints it)."""
    from superduper.backends.registry import capability_table

    text = README.read_text()
    shown = text.split('<!-- capabilities -->\n', 1)[1].split('\n<!-- /capabilities -->', 1)[0].splitlines()
    generated = capability_table().splitlines()
    assert shown[:2] == generated[:2]
    by_uri = {line.split('|')[1].strip(): line for line in shown[2:]}
    for line in generated[2:]:
        uri = line.split('|')[1].strip()
        assert uri in by_uri, f'{uri} is missing from the README table'
        if '| ? |' not in line:  # a backend whose driver is installed here
            assert by_uri[uri] == line
    assert len(by_uri) == len(generated) - 2
