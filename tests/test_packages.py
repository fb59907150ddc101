"""Application, Template, packages on disk, and the CLI that applies them; with the package security checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from superduper import Application, Listener, ObjectModel, Table, Template, VectorIndex, superduper
from superduper.base.exceptions import ComponentError
from superduper.base.package import PackageError
from superduper.ext.http_api import OpenAIEmbedding

from conftest import backend_uri, server, server_in_use

WORDS = ['apple pie', 'banana bread', 'cherry tart', 'date loaf', 'elderberry jam', 'fig roll']


def letter_counts() -> ObjectModel:
    """A deterministic embedding, defined inside a function so that it is pickled by value (no test module needed)."""

    def embed(text: str) -> np.ndarray:
        vector = np.zeros(8, dtype=np.float32)
        for ch in text:
            vector[ord(ch) % 8] += 1
        return vector

    return ObjectModel('letters', object=embed, datatype='vector[float32:8]')


def search_app(table: str = 'documents') -> Application:
    listener = letter_counts().to_listener(table, key='txt', identifier=f'{table}-letters')
    return Application('search', components=[
        Table(table, fields={'txt': 'str'}),
        listener,
        VectorIndex(f'{table}-index', indexing_listener=listener),
    ])


def nearest(db, table: str, text: str, index: str = 'documents-index') -> list[str]:
    return [r['txt'] for r in db[table].like({'txt': text}, vector_index=index, n=3).select('txt').execute()]


@pytest.fixture
def source(tmp_path):
    db = superduper(f'sqlite://{tmp_path}/source.db', artifact_store=f'filesystem://{tmp_path}/source-artifacts')
    db.apply(search_app())
    db['documents'].insert([{'txt': w} for w in WORDS]).execute()
    yield db
    db.close()


def test_application_is_applied_versioned_and_removed_as_a_unit(db):
    app = db.apply(search_app())
    assert app.version == 0
    assert {('Listener', 'documents-letters'), ('VectorIndex', 'documents-index'), ('Table', 'documents'),
            ('Model', 'letters'), ('Application', 'search')} <= set(db.show())
    assert db.apply(search_app()).version == 0  # the same declaration again: nothing new
    db['documents'].insert([{'txt': w} for w in WORDS]).execute()
    assert nearest(db, 'documents', 'apple pie')[0] == 'apple pie'

    bigger = search_app()
    bigger.components.append(ObjectModel('shout', object=str.upper))
    assert db.apply(bigger).version == 1
    assert db.show('Application', 'search') == [0, 1]

    db.remove('Application', 'search')
    assert set(db.show()) == {('Table', 'documents')}  # a table with rows is kept; everything else is gone
    assert db['documents'].count().execute() == len(WORDS)
    assert not [t for t in db.databackend.table_names() if t.startswith('_outputs__')]


def test_removing_an_application_drops_its_empty_tables(db):
    db.apply(search_app('scratch'))
    db.remove('Application', 'search')
    assert db.show() == []
    assert 'scratch' not in db.databackend.table_names()


def test_template_exported_from_sqlite_works_on_every_backend(source, db, tmp_path):
    template = Template('search-template', component=source.load('Application', 'search'),
                        substitutions={'documents': 'table'})
    package = template.export(tmp_path / 'search.zip')
    assert zipfile.is_zipfile(package)

    read = Template.read(package, trust=True)
    assert read.variables == ['table']
    app = db.apply(read, table='articles')
    assert app.identifier == 'search' and [c.identifier for c in app.components][0] == 'articles'
    # whole names are substituted: the identifiers that merely contain 'documents' stay as they are
    assert {('Listener', 'documents-letters'), ('VectorIndex', 'documents-index')} <= set(db.show())
    db['articles'].insert([{'txt': w} for w in WORDS]).execute()
    for text in ['banana bread', 'fig', 'cherry jam']:
        assert nearest(db, 'articles', text) == nearest(source, 'documents', text)
    listener = db.load('Listener', 'documents-letters')
    assert listener.source == 'articles'
    outputs = {r['txt']: r[listener.outputs].tolist() for r in
               db['articles'].select('txt').outputs(listener.predict_id).execute()}
    assert outputs['apple pie'] == letter_counts().predict('apple pie').tolist()


def test_template_folder_and_chained_listeners(source, tmp_path):
    upper = ObjectModel('upper', object=str.upper).to_listener('documents', key='txt', identifier='documents-upper')
    length = Listener(model=ObjectModel('length', object=len), select=source[upper.outputs].select(),
                      key=upper.outputs, upstream=[upper], identifier='length')
    source.apply(Application('chain', components=[upper, length]))
    Template('chain', component=source.load('Application', 'chain'),
             substitutions={'documents': 'table', 'documents-upper': 'name'}).export(tmp_path / 'chain')
    assert sorted(os.listdir(tmp_path / 'chain')) == ['artifacts', 'component.json', 'manifest.json', 'requirements.txt']

    target = superduper(f'sqlite://{tmp_path}/target.db', artifact_store=f'filesystem://{tmp_path}/target-artifacts')
    target.apply(Table('posts', fields={'txt': 'str'}))
    target['posts'].insert([{'txt': 'hello'}, {'txt': 'hi'}]).execute()
    target.apply(Template.read(tmp_path / 'chain', trust=True), table='posts', name='posts-upper')
    new_upper = target.load('Listener', 'posts-upper')
    new_length = target.load('Listener', 'length')
    assert new_length.source == new_upper.outputs  # the downstream follows the new upstream's outputs table
    assert sorted(r[new_upper.outputs] for r in target[new_upper.outputs].select().execute()) == ['HELLO', 'HI']
    assert sorted(r[new_length.outputs] for r in target[new_length.outputs].select().execute()) == [2, 5]
    target.close()


def test_pickled_code_needs_trust(source, tmp_path):
    Template('search', component=source.load('Application', 'search'), substitutions={'documents': 'table'}).export(
        tmp_path / 'pkg.zip')
    target = superduper(f'sqlite://{tmp_path}/target.db', artifact_store=f'filesystem://{tmp_path}/target-artifacts')
    with pytest.raises(ComponentError, match=r"(?s)pickled code.*Model 'letters', field 'object'.*numpy.*trust=True"):
        target.apply(Template.read(tmp_path / 'pkg.zip'), table='articles')
    assert target.show() == []
    assert 'articles' not in target.databackend.table_names()
    target.close()


def test_a_package_without_pickles_needs_no_trust(tmp_path, monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-secret-123')
    db = superduper(f'sqlite://{tmp_path}/a.db', artifact_store=f'filesystem://{tmp_path}/a-artifacts')
    embedding = OpenAIEmbedding('remote', base_url='http://127.0.0.1:9/v1', datatype='vector[float32:8]')
    app = Application('remote-app', components=[Table('notes', fields={'txt': 'str'}),
                                                 embedding.to_listener('notes', key='txt')])
    db.apply(app)
    Template('remote', component=app, substitutions={'notes': 'table'}).export(tmp_path / 'remote')
    assert (tmp_path / 'remote' / 'artifacts').exists() and not os.listdir(tmp_path / 'remote' / 'artifacts')
    other = superduper(f'sqlite://{tmp_path}/b.db', artifact_store=f'filesystem://{tmp_path}/b-artifacts')
    other.apply(Template.read(tmp_path / 'remote'), table='memos')
    assert other.load('Listener', 'remote').source == 'memos'
    assert 'sk-secret-123' not in json.dumps(other.show('Model', 'remote', 0)['record'])
    assert not any('sk-secret-123' in p.read_text() for p in (tmp_path / 'remote').glob('*.*'))
    db.close(), other.close()


def test_requirements_name_the_libraries(tmp_path):
    from sklearn.svm import SVC

    from superduper.ext.sklearn import SklearnModel

    Template('clf', component=SklearnModel('svc', object=SVC())).export(tmp_path / 'clf')
    lines = (tmp_path / 'clf' / 'requirements.txt').read_text().splitlines()
    assert lines[0].startswith('superduper[sklearn]==')
    assert any(line.startswith('scikit-learn==') for line in lines)


def test_zip_slip_is_refused(source, tmp_path):
    good = Template('search', component=source.load('Application', 'search')).export(tmp_path / 'good.zip')
    outside = tmp_path / 'evil.txt'
    for bad_name in ['../evil.txt', str(outside), 'artifacts/../../evil.txt']:
        bad = tmp_path / 'bad.zip'
        shutil.copy(good, bad)
        with zipfile.ZipFile(bad, 'a') as archive:
            archive.writestr(bad_name, 'gotcha')
        with pytest.raises(PackageError, match=r'member .* outside the package'):
            Template.read(bad, trust=True)
        assert not outside.exists()
    link = tmp_path / 'link.zip'
    shutil.copy(good, link)
    with zipfile.ZipFile(link, 'a') as archive:
        info = zipfile.ZipInfo('artifacts/link')
        info.external_attr = (0o120777 << 16)  # a symbolic link
        archive.writestr(info, '/etc/passwd')
    with pytest.raises(PackageError, match='link'):
        Template.read(link, trust=True)


def test_tampered_packages_are_refused(source, tmp_path):
    folder = Template('search', component=source.load('Application', 'search')).export(tmp_path / 'pkg')
    target = superduper(f'sqlite://{tmp_path}/target.db', artifact_store=f'filesystem://{tmp_path}/target-artifacts')

    def tampered(change) -> Path:
        copy = tmp_path / f'copy-{len(os.listdir(tmp_path))}'
        shutil.copytree(folder, copy)
        change(copy)
        return copy

    def edit_json(p: Path) -> None:
        text = (p / 'component.json').read_text()
        (p / 'component.json').write_text(text.replace('"txt"', '"body"'))

    artifact = next((folder / 'artifacts').iterdir()).name
    cases = {
        r"checksum of 'component.json' does not match": edit_json,
        rf"checksum of 'artifacts/{artifact}'": lambda p: (p / 'artifacts' / artifact).write_bytes(b'evil'),
        r"'artifacts/extra' is not in its manifest": lambda p: (p / 'artifacts' / 'extra').write_bytes(b'x'),
        rf"incomplete: 'artifacts/{artifact}' is missing": lambda p: (p / 'artifacts' / artifact).unlink(),
        r'has no manifest.json': lambda p: (p / 'manifest.json').unlink(),
    }
    for message, change in cases.items():
        with pytest.raises(PackageError, match=message):
            target.apply(Template.read(tampered(change), trust=True))
    assert target.show() == []
    target.close()


def test_bad_variables_and_paths(source, tmp_path):
    template = Template('search', component=source.load('Application', 'search'), substitutions={'documents': 'table'})
    with pytest.raises(ComponentError, match=r"needs values for table"):
        source.apply(template)
    with pytest.raises(ComponentError, match=r"has no variable 'tabel'; its variables: table"):
        source.apply(template, table='x', tabel='y')
    with pytest.raises(ComponentError, match=r'only for templates'):
        source.apply(search_app(), table='x')
    with pytest.raises(ComponentError, match=r'substitute non-empty strings by variable names'):
        Template('t', component=search_app(), substitutions={'documents': 'not a name'})
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'file').write_text('mine')
    with pytest.raises(PackageError, match=r'exists and is not an empty folder'):
        template.export(tmp_path / 'taken')
    assert (tmp_path / 'taken' / 'file').read_text() == 'mine'
    with pytest.raises(PackageError, match=r'no package at'):
        Template.read(tmp_path / 'missing.zip')
    app = source.apply(template, table='copies')  # a template in hand needs no package
    assert app.version == 1 and app.components[0].identifier == 'copies' and 'copies' in source.show('Table')


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, '-m', 'superduper.cli', *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300, env={**os.environ, **env})


@pytest.fixture
def in_use(target_backend):
    with server_in_use(target_backend, exclusive=False):
        yield


@pytest.mark.parametrize('target_backend', ['sqlite', 'postgresql'])
@pytest.mark.usefixtures('in_use')
def test_cli_export_apply_show_remove(source, tmp_path, target_backend):
    source_uri = f'sqlite://{tmp_path}/source.db'
    target_uri = backend_uri(target_backend, tmp_path / 'target') if target_backend == 'sqlite' else \
        server(target_backend).uri
    (tmp_path / 'target').mkdir(exist_ok=True)
    try:
        done = cli('export', source_uri, 'Application', 'search', str(tmp_path / 'app.zip'), '--sub', 'documents=table',
                   cwd=tmp_path)  # the database knows where its artifacts are
        assert done.returncode == 0, done.stderr
        assert 'exported Application' in done.stdout

        refused = cli('apply', str(tmp_path / 'app.zip'), target_uri, '--var', 'table=articles', cwd=tmp_path)
        assert refused.returncode == 1 and 'pickled code' in refused.stderr and '--trust' in refused.stderr
        assert cli('apply', str(tmp_path / 'app.zip'), target_uri, '--var', 'oops', cwd=tmp_path).returncode == 2

        applied = cli('apply', str(tmp_path / 'app.zip'), target_uri, '--var', 'table=articles', '--trust', cwd=tmp_path)
        assert applied.returncode == 0, applied.stderr
        assert "applied Application 'search' version 0" in applied.stdout

        shown = cli('show', target_uri, cwd=tmp_path)
        assert shown.returncode == 0 and shown.stdout.splitlines()[0].split() == ['type', 'identifier', 'versions']
        assert any(line.split()[:2] == ['VectorIndex', 'documents-index'] for line in shown.stdout.splitlines())
        missing = cli('show', target_uri, 'Listener', 'nope', cwd=tmp_path)
        assert missing.returncode == 1 and "no Listener named 'nope'" in missing.stderr

        removed = cli('remove', target_uri, 'Application', 'search', cwd=tmp_path)
        assert removed.returncode == 0, removed.stderr
        assert cli('show', target_uri, cwd=tmp_path).stdout.splitlines()[1:] == []
        assert cli('remove', target_uri, 'Application', 'search', cwd=tmp_path).returncode == 1
    finally:
        if target_backend != 'sqlite':
            server(target_backend).reset()


def test_every_command_has_help(tmp_path):
    for command in ['apply', 'show', 'remove', 'export', 'start', 'status', 'retry', 'trust']:
        done = cli(command, '--help', cwd=tmp_path)
        assert done.returncode == 0 and 'Usage' in done.stdout, command


def test_an_application_that_fails_leaves_nothing_behind(db):
    db.apply(Table('kept', fields={'txt': 'str'}))
    db['kept'].insert([{'txt': 'a'}]).execute()
    broken = Application('broken', components=[
        Table('fresh', fields={'txt': 'str'}),
        ObjectModel('upper', object=str.upper).to_listener('kept', key='txt', identifier='fine'),
        ObjectModel('upper', object=str.upper).to_listener('fresh', key='no_such_field', identifier='bad'),
    ])
    with pytest.raises(Exception, match="key 'no_such_field' is not a field"):
        db.apply(broken)
    assert db.show() == [('Table', 'kept')]
    assert 'fresh' not in db.databackend.table_names()
    assert db['kept'].count().execute() == 1 and not [t for t in db.databackend.table_names() if 'outputs' in t]


def test_field_names_and_query_structure_under_substitution(source, tmp_path):
    template = Template('search', component=source.load('Application', 'search'),
                        substitutions={'documents': 'table', 'txt': 'field', 'select': 'oops'})
    template.export(tmp_path / 'pkg')
    target = superduper(f'sqlite://{tmp_path}/t.db', artifact_store=f'filesystem://{tmp_path}/t-artifacts')
    target.apply(Template.read(tmp_path / 'pkg', trust=True), table='posts', field='body', oops='select')
    assert target.load('Table', 'posts').fields == {'body': 'str'}
    assert target.load('Listener', 'documents-letters').key == 'body'
    target['posts'].insert([{'body': w} for w in WORDS]).execute()
    hits = target['posts'].like({'body': 'fig roll'}, vector_index='documents-index', n=1).select('body').execute()
    assert [r['body'] for r in hits] == ['fig roll']
    target.close()


def test_a_package_with_malformed_json_is_refused(source, tmp_path):
    import hashlib

    folder = Template('search', component=source.load('Application', 'search')).export(tmp_path / 'pkg')
    for text in ['{not json', '{"root": 3}']:
        (folder / 'component.json').write_text(text)  # re-sealed: the checksums match, the content does not
        manifest = json.loads((folder / 'manifest.json').read_text())
        manifest['files']['component.json'] = hashlib.sha256(text.encode()).hexdigest()
        (folder / 'manifest.json').write_text(json.dumps(manifest))
        with pytest.raises(PackageError, match='component.json'):
            Template.read(folder, trust=True)


def test_substitution_replaces_whole_names_only(tmp_path):
    db = superduper(f'sqlite://{tmp_path}/s.db', artifact_store=f'filesystem://{tmp_path}/s-artifacts')
    db.apply(Table('docs', fields={'txt': 'str'}))
    db.apply(Table('docs_count', fields={'n': 'int'}))
    listener = ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt',
                                                                                 identifier='docs-search')
    app = db.apply(Application('names', components=[listener]))
    Template('names', component=app, substitutions={'docs': 'table'}).export(tmp_path / 'pkg')
    target = superduper(f'sqlite://{tmp_path}/t.db', artifact_store=f'filesystem://{tmp_path}/t-artifacts')
    target.apply(Table('posts', fields={'txt': 'str'}))
    target.apply(Template.read(tmp_path / 'pkg', trust=True), table='posts')
    built = target.load('Listener', 'docs-search')  # not 'posts-search': 'docs' is only a part of that name
    assert built.source == 'posts' and built.key == 'txt'
    assert 'posts_count' not in str(Template('x', component=db.load('Table', 'docs_count'),
                                             substitutions={'docs': 'table'})._blueprint(str(tmp_path))[0])
    db.close()
    target.close()
