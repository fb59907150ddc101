"""The web console in a real browser: a real ``superduper serve`` process over a SQLite file prepared here, driven
with Debian's chromium through Playwright (never a downloaded browser). Screenshots are kept in
``test-artifacts/console/`` at the repository's root, kept as the run's artifacts (git ignores them)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip('fastapi')
sync_api = pytest.importorskip('playwright.sync_api')

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SHOTS = REPO / 'test-artifacts' / 'console'
CHROMIUM = os.environ.get('SUPERDUPER_TEST_CHROMIUM', '/usr/bin/chromium')
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
SECRET = 'console-test-secret'
ROWS = ['aaaa', 'eeee', 'iiii', 'oooo', 'bad <script>window.pwned = 1</script>']
#: a value that would run as a script if the console put it in as markup
SCRIPT_ROW = ROWS[-1]


@dataclass
class Site:
    url: str
    keys: dict[str, str]


def _prepare(folder: Path) -> tuple[str, dict[str, str]]:
    """A SQLite database with a table, a listener failing on one row, a vector index, and a key per scope."""
    from console_models import shout, vowels

    from superduper import ObjectModel, Table, VectorIndex, superduper
    from superduper.server.keys import ApiKeys

    uri = f'sqlite:///{folder}/db.sqlite'
    db = superduper(uri, artifact_store=f'filesystem://{folder}/artifacts', progress=False)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}))
        db['docs'].insert([{'txt': t} for t in ROWS]).execute()
        db.apply(ObjectModel('shout', object=shout).to_listener('docs', key='txt', identifier='shout'))
        embed = ObjectModel('vowels', object=vowels, datatype='vector[float32:5]')
        db.apply(VectorIndex('docs-index', indexing_listener=embed.to_listener('docs', key='txt', identifier='vowels')))
        keys = ApiKeys(db.metadata)
        return uri, {scope: keys.create(f'{scope}-user', scope) for scope in ('read', 'write')}
    finally:
        db.close()


def _wait_for_url(process: subprocess.Popen, lines: list[str], timeout: float = 30) -> str:
    """The address the server prints once it listens (its stderr is read on into ``lines`` by a thread)."""
    found = threading.Event()

    def read() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith('serving http://'):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.05):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError('the server did not start:\n' + ''.join(lines))
    return next(line.split()[1] for line in lines if line.startswith('serving http://'))


@pytest.fixture(scope='module')
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp('console')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('SUPERDUPER_SECRET', SECRET)  # the server process checks the code signed here
        patch.syspath_prepend(str(TESTS))
        uri, keys = _prepare(folder)
    path = os.pathsep.join([str(REPO), str(TESTS), os.environ.get('PYTHONPATH', '')])
    # one attempt: the server retries no failed row by itself, so the numbers the pages show hold still
    env = {**os.environ, 'SUPERDUPER_SECRET': SECRET, 'SUPERDUPER_MAX_ATTEMPTS': '1', 'PYTHONPATH': path}
    process = subprocess.Popen([sys.executable, '-m', 'superduper.cli', 'serve', uri, '--port', '0'], cwd=folder,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        yield Site(_wait_for_url(process, lines), keys)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope='module')
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get('CI'):
            pytest.fail(f'no chromium at {CHROMIUM}')
        pytest.skip(f'no chromium at {CHROMIUM}')
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, site: Site):
    context = browser.new_context(base_url=site.url, viewport={'width': 1280, 'height': 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f'{name}.png'), full_page=True)


def log_in(page, key: str) -> None:
    page.goto('/login')
    page.fill('#key', key)
    page.click('form.login button[type=submit]')
    page.wait_for_url('**/')


def test_pages_need_a_key_and_a_bad_key_is_refused(page):
    page.goto('/')
    assert page.url.endswith('/login')
    page.fill('#key', 'sdk_0000_not-a-key')
    page.click('form.login button[type=submit]')
    assert 'not valid' in page.locator('main p.bad').inner_text()
    shot(page, 'login-refused')


def test_overview_shows_components_listeners_and_jobs(page, site):
    log_in(page, site.keys['read'])
    assert 'read-user (read)' in page.locator('header').inner_text()
    listeners = page.locator('table').first
    shout_row = listeners.locator('tr', has_text='shout').inner_text().split('\t')
    assert shout_row[:5] == ['shout', 'docs', '4', '0', '1'], shout_row  # done, pending, failed
    jobs = page.locator('h2:has-text("Jobs") + table')
    assert jobs.locator('progress').count() == 2
    assert '5 / 5' in jobs.inner_text()
    for name in ('docs-index', 'vowels', 'docs'):
        assert page.locator(f'a:text-is("{name}")').count() >= 1
    shot(page, 'overview')


def test_a_component_shows_its_versions_and_latest_record_without_signatures(page, site):
    log_in(page, site.keys['read'])
    page.click('a[href="/components/Model/shout"]')
    text = page.locator('main').inner_text()
    assert 'Versions' in text and '"identifier": "shout"' in text
    assert 'signature' not in text
    shot(page, 'component')


def test_failures_show_as_text_and_retry_needs_the_write_scope(page, site):
    log_in(page, site.keys['read'])
    page.click('a[href="/listeners/shout"]')
    failures = page.locator('h2:has-text("Failures") + table').inner_text()
    assert "ValueError: cannot shout 'bad <script>window.pwned = 1</script>'" in failures  # text, not markup
    assert page.evaluate('window.pwned') is None
    page.click('#retry')
    result = page.locator('#retry-result')
    sync_api.expect(result).to_contain_text('refused')
    assert "needs the 'write' scope" in result.inner_text()
    shot(page, 'retry-refused')


def test_retry_with_a_write_key_shows_the_result(page, site):
    log_in(page, site.keys['write'])
    page.goto('/listeners/shout')
    page.click('#retry')
    sync_api.expect(page.locator('#retry-result')).to_have_text('retried: 1 row(s) still failing')
    shot(page, 'retry-done')


def test_search_finds_the_nearest_row_and_shows_values_as_text(page, site):
    log_in(page, site.keys['read'])
    page.click('header a:text("Search")')
    assert page.input_value('#key') == 'txt'
    page.fill('#query', 'oo')
    page.fill('#n', '5')
    page.click('form.search button[type=submit]')
    rows = page.locator('#results tbody tr')
    sync_api.expect(rows).to_have_count(5)
    assert 'oooo' in rows.first.inner_text().split('\t')
    assert SCRIPT_ROW in page.locator('#results').inner_text()
    assert page.evaluate('window.pwned') is None
    shot(page, 'search')
    page.fill('#filter', '{"txt": "eeee"}')
    page.click('form.search button[type=submit]')
    sync_api.expect(rows).to_have_count(1)
    assert 'eeee' in rows.first.inner_text()
    page.fill('#filter', '{"nope": 1}')
    page.click('form.search button[type=submit]')
    sync_api.expect(page.locator('#search-error')).not_to_be_empty()


def test_logout_clears_the_key(page, site):
    log_in(page, site.keys['read'])
    page.click('header button:text("Log out")')
    page.wait_for_url('**/login')
    page.goto('/search')
    assert page.url.endswith('/login')


def test_the_cookie_changes_nothing_without_the_console_header(site):
    """Another site's page can make the browser send the cookie, but not the header: its POST is unauthenticated."""
    import httpx

    cookies = {'superduper_key': site.keys['write']}
    with httpx.Client(base_url=site.url, cookies=cookies) as client:
        assert client.post('/api/v1/listeners/shout/retry').status_code == 401
        assert client.post('/api/v1/listeners/shout/retry', headers={'X-Superduper-Console': '1'}).status_code == 200
        assert client.get('/').status_code == 200
        login = client.post('/login', data={'key': site.keys['read']}, follow_redirects=False)
        assert login.status_code == 303
        cookie = login.headers['set-cookie'].lower()
        assert 'httponly' in cookie and 'samesite=strict' in cookie and 'path=/' in cookie


def test_only_the_console_s_own_files_are_static(site):
    import httpx

    assert httpx.get(f'{site.url}/static/console.js').headers['content-type'].startswith('text/javascript')
    assert httpx.get(f'{site.url}/static/..%2Fkeys.py').status_code == 404


# ---- in process: what the browser cannot see --------------------------------------------------------------------
@pytest.fixture
def client(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from superduper import superduper
    from superduper.server import create_app
    from superduper.server.settings import ServeSettings

    monkeypatch.setenv('SUPERDUPER_SECRET', SECRET)
    monkeypatch.setenv('SUPERDUPER_MAX_ATTEMPTS', '1')
    monkeypatch.syspath_prepend(str(TESTS))
    uri, keys = _prepare(tmp_path)
    db = superduper(uri, progress=False)

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError(f'a page loaded a component: {args}')

    monkeypatch.setattr(db, 'load', no_loading)
    try:
        with TestClient(create_app(db, ServeSettings(anonymous='read'))) as client:
            client.keys = keys  # type: ignore[attr-defined]
            yield client
    finally:
        db.close()


def test_pages_read_the_metadata_and_load_no_model(client):
    for path in ('/', '/listeners/shout', '/listeners/vowels', '/search', '/components/Model/shout',
                 '/components/VectorIndex/docs-index'):
        response = client.get(path)  # anonymous reading is allowed here: no login
        assert response.status_code == 200, (path, response.text)
        assert response.headers['content-security-policy'].startswith("default-src 'self'")
    assert client.get('/listeners/shout').text.count('&lt;script&gt;window.pwned') == 1
    assert '<script>window' not in client.get('/listeners/shout').text


def test_names_in_addresses_are_escaped_and_unknown_things_are_404(client):
    response = client.get('/listeners/%3Cb%3Ex')
    assert response.status_code == 404 and 'Listener &lt;b&gt;x' in response.text and '<b>x' not in response.text
    assert client.get('/components/Model/nope').status_code == 404


def test_a_login_or_logout_posted_from_another_site_is_refused(client):
    key = client.keys['read']
    refused = client.post('/login', data={'key': key}, headers={'Origin': 'http://evil.example'},
                          follow_redirects=False)
    assert refused.status_code == 403 and 'set-cookie' not in refused.headers
    assert client.post('/logout', headers={'Origin': 'http://evil.example'}).status_code == 403
    same = client.post('/login', data={'key': key}, headers={'Origin': 'http://testserver'}, follow_redirects=False)
    assert same.status_code == 303 and same.headers['location'] == '/'


def test_an_invalid_key_cookie_sends_to_the_login_page(client):
    client.app.state.service.settings.anonymous = 'none'
    client.cookies.set('superduper_key', 'sdk_0_nope')
    assert client.get('/', follow_redirects=False).headers['location'] == '/login'
    client.cookies.clear()
    assert client.get('/search', follow_redirects=False).status_code == 303


def test_markup_is_only_what_the_console_makes():
    from superduper.server.console import Html, _tag

    made = _tag('a', '<b>', Html('<i>ok</i>'), href='"><script>', data_key='x')
    assert made == '<a href="&quot;&gt;&lt;script&gt;" data-key="x">&lt;b&gt;<i>ok</i></a>'


def test_the_overview_shows_a_vector_index_switching_models(tmp_path, monkeypatch):
    """A new version of an indexed listener's model: the listeners table says the index switched to it."""
    from fastapi.testclient import TestClient

    from superduper import ObjectModel, Table, VectorIndex, superduper
    from superduper.server import create_app
    from superduper.server.settings import ServeSettings

    monkeypatch.setenv('SUPERDUPER_SECRET', SECRET)
    monkeypatch.syspath_prepend(str(TESTS))
    from console_models import vowels, vowels_squared

    db = superduper(f'sqlite:///{tmp_path}/db.sqlite', artifact_store=f'filesystem://{tmp_path}/artifacts',
                    progress=False)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}))
        db['docs'].insert([{'txt': t} for t in ROWS[:3]]).execute()
        for embedding in (vowels, vowels_squared):
            embed = ObjectModel('vowels', object=embedding, datatype='vector[float32:5]')
            db.apply(VectorIndex('docs-index', indexing_listener=embed.to_listener('docs', key='txt',
                                                                                   identifier='vowels')))
        with TestClient(create_app(db, ServeSettings(anonymous='read'))) as client:
            page = client.get('/').text
        assert '<th>index switch</th>' in page and "VectorIndex &#x27;docs-index&#x27; switched from v0 to v1" in page
    finally:
        db.close()
