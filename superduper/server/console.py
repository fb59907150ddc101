"""The web console: server-rendered pages over the same service as the REST API (components and versions, listener
status and failures with a retry button, jobs with progress, a search box over any vector index).

No template engine: each page is built by small functions, and every value passes through ``html.escape`` (``_text``)
unless it is ``Html`` made here. Pages read the metadata and ``Service.status()`` only: rendering loads no model.
Changes (retry) and searches go through the REST API with ``fetch`` from ``static/console.js``, which sends the
console's header so that the key cookie counts (see ``service.CONSOLE_HEADER``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from superduper.server.codec import to_json, without_signatures
from superduper.server.errors import HTTPProblem
from superduper.server.keys import Caller
from superduper.server.service import KEY_COOKIE

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / 'static'
ASSETS = {'console.css': 'text/css', 'console.js': 'text/javascript'}
#: the most recent jobs the overview lists
JOBS_SHOWN = 100
#: the most failed rows a listener's page lists (the heading says how many there are)
FAILURES_SHOWN = 200
#: the cookie's lifetime in seconds (the key itself may live longer; log in again after this)
COOKIE_AGE = 12 * 3600
SECURITY_HEADERS = {'Content-Security-Policy': "default-src 'self'; frame-ancestors 'none'",
                    'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'same-origin',
                    'Cache-Control': 'no-store'}


class Html(str):
    """Markup made by this module: inserted as it is (everything else is escaped)."""


def _text(value: Any) -> Html:
    if isinstance(value, Html):
        return value
    return Html(html.escape('' if value is None else str(value)))


def _join(parts: Iterable[Any]) -> Html:
    return Html(''.join(_text(p) for p in parts))


def _tag(element: str, /, *children: Any, **attrs: Any) -> Html:
    """``<element attrs>children</element>``; attribute names use ``_`` for ``-`` (``data_key``), ``cls`` for class."""
    return Html(f'{_void(element, **attrs)}{_join(children)}</{element}>')


def _void(element: str, /, **attrs: Any) -> Html:
    """An element without content (``<input ...>``); ``True`` is an attribute without a value."""
    shown = ''.join(f' {_attr_name(k)}' if v is True else f' {_attr_name(k)}="{html.escape(str(v))}"'
                    for k, v in attrs.items() if v is not None and v is not False)
    return Html(f'<{element}{shown}>')


def _attr_name(name: str) -> str:
    return 'class' if name == 'cls' else name.rstrip('_').replace('_', '-')


def _link(href: str, text: Any) -> Html:
    return _tag('a', text, href=href)


def _table(headers: list[str], rows: Iterable[list[Any]], empty: str = 'none') -> Html:
    body = [_tag('tr', *(_tag('td', cell) for cell in row)) for row in rows]
    if not body:
        return _tag('p', empty, cls='muted')
    return _tag('table', _tag('thead', _tag('tr', *(_tag('th', h) for h in headers))), _tag('tbody', *body))


def _json(value: Any) -> Html:
    return _tag('pre', json.dumps(value, indent=2, default=str))


def _path(*parts: str) -> str:
    return '/' + '/'.join(quote(p, safe='') for p in parts)


def _page(title: str, caller: Caller | None, *body: Any, status: int = 200) -> HTMLResponse:
    nav = [_link('/', 'Overview'), _link('/search', 'Search')]
    if caller is not None:
        logout = _tag('form', _tag('button', 'Log out', type='submit'), method='post', action='/logout', cls='inline')
        nav += [_tag('span', f'{caller.name} ({caller.scope})', cls='who'), logout]
    document = Html('<!doctype html>') + _tag(
        'html',
        _tag('head', _void('meta', charset='utf-8'), _tag('title', f'{title} · superduper'),
             _void('link', rel='stylesheet', href='/static/console.css'),
             _tag('script', src='/static/console.js', defer=True)),
        _tag('body', _tag('header', _tag('strong', 'superduper'), *nav), _tag('main', _tag('h1', title), *body)),
        lang='en')
    return HTMLResponse(document, status_code=status, headers=SECURITY_HEADERS)


def _service(request: Request) -> Any:
    return request.app.state.service


def _viewer(request: Request) -> Caller | None:
    """The caller if it may read, else ``None`` (no key, an invalid one, or no anonymous reading)."""
    try:
        caller = _service(request).caller(request)
    except HTTPProblem:
        return None
    return caller if caller.allows('read') else None


def _to_login() -> RedirectResponse:
    return RedirectResponse('/login', status_code=303)


def _cross_site(request: Request) -> bool:
    """A form posted from another site's page (browsers send ``Origin`` with every POST): logging a visitor in with
    someone else's key, or out, is refused."""
    origin = request.headers.get('origin')
    return origin is not None and urlsplit(origin).netloc != request.headers.get('host')


# ---- overview --------------------------------------------------------------------------------------------------
@router.get('/')
def overview(request: Request) -> Response:
    if (caller := _viewer(request)) is None:
        return _to_login()
    service = _service(request)
    return _page('Overview', caller,
                 _tag('h2', 'Listeners'), _listeners(service.status()),
                 _tag('h2', 'Jobs'), _jobs(service.db.jobs()),
                 _tag('h2', 'Components'), _components(service.db.metadata.all()))


def _listeners(status: list[dict]) -> Html:
    rows = [[_link(_path('listeners', s['listener']), s['listener']), s['table'], s['done'], _maybe(s['pending']),
             _failed(s['failed']), _lag(s['lag_seconds']), s['problem'] or '', s.get('switch') or '']
            for s in status]
    return _table(['listener', 'table', 'done', 'pending', 'failed', 'lag', 'problem', 'index switch'], rows,
                  'no listeners')


def _maybe(value: Any) -> Any:
    return '?' if value is None else value


def _failed(count: int) -> Html:
    return _tag('span', count, cls='bad' if count else None)


def _lag(seconds: float | None) -> str:
    return '-' if seconds is None else f'{seconds:.1f} s'


def _jobs(jobs: list[dict]) -> Html:
    rows = [[job['kind'], f"{job['type_id']} {job['identifier']}", _progress(job), _tag('span', job['status'],
             cls=f"status-{job['status']}"), job.get('failed') or 0, job.get('error') or '', job.get('started_at')]
            for job in list(reversed(jobs))[:JOBS_SHOWN]]
    shown = _table(['kind', 'component', 'progress', 'status', 'failed', 'error', 'started'], rows, 'no jobs')
    if len(jobs) > JOBS_SHOWN:
        return _join([shown, _tag('p', f'the latest {JOBS_SHOWN} of {len(jobs)} jobs', cls='muted')])
    return shown


def _progress(job: dict) -> Html:
    done, total = job.get('done') or 0, job.get('total')
    if not total:
        return _text(f'{done} / ?')
    return _join([_tag('progress', value=min(done, total), max=total), f' {done} / {total}'])


def _components(records: list[dict]) -> Html:
    versions: dict[str, dict[str, list[int]]] = {}
    for record in records:
        versions.setdefault(record['type_id'], {}).setdefault(record['identifier'], []).append(record['version'])
    sections = []
    for type_id in sorted(versions):
        rows = [[_link(_path('components', type_id, identifier), identifier), ', '.join(map(str, sorted(v)))]
                for identifier, v in sorted(versions[type_id].items())]
        sections += [_tag('h3', type_id), _table(['identifier', 'versions'], rows)]
    return _join(sections) if sections else _tag('p', 'no components', cls='muted')


# ---- one component -------------------------------------------------------------------------------------------
@router.get('/components/{type_id}/{identifier}')
def component(type_id: str, identifier: str, request: Request) -> Response:
    if (caller := _viewer(request)) is None:
        return _to_login()
    records = [r for r in _service(request).db.metadata.all()
               if r['type_id'] == type_id and r['identifier'] == identifier]
    title = f'{type_id} {identifier}'
    if not records:
        return _page(title, caller, _tag('p', 'no such component', cls='bad'), status=404)
    records.sort(key=lambda r: r['version'])
    rows = [[r['version'], r['uuid'], r['created_at']] for r in records]
    return _page(title, caller, _tag('h2', 'Versions'), _table(['version', 'uuid', 'created'], rows),
                 _tag('h2', f"Latest (version {records[-1]['version']})"),
                 _json(without_signatures(to_json(records[-1]['record']))))


# ---- one listener --------------------------------------------------------------------------------------------
@router.get('/listeners/{identifier}')
def listener(identifier: str, request: Request) -> Response:
    if (caller := _viewer(request)) is None:
        return _to_login()
    service = _service(request)
    found = [s for s in service.status() if s['listener'] == identifier]
    if not found:
        return _page(f'Listener {identifier}', caller, _tag('p', 'no such listener', cls='bad'), status=404)
    failures = service.db.failures(identifier)
    rows = [[f.get('source'), f.get('attempts'), f.get('failed_at'), _tag('code', f.get('error'))]
            for f in failures[:FAILURES_SHOWN]]
    retry = _tag('button', 'Retry failed rows', id='retry',
                 data_url=_path('api', 'v1', 'listeners', identifier, 'retry'))
    return _page(f'Listener {identifier}', caller,
                 _listeners(found), _tag('p', _link(_path('components', 'Listener', identifier), 'the declaration')),
                 _tag('h2', f'Failures ({len(failures)})'), _table(['row', 'attempts', 'failed at', 'error'], rows),
                 _tag('p', retry, ' ', _tag('output', id='retry-result', role='status')))


# ---- search --------------------------------------------------------------------------------------------------
@router.get('/search')
def search(request: Request) -> Response:
    if (caller := _viewer(request)) is None:
        return _to_login()
    indexes = _indexes(_service(request).db.metadata)
    if not indexes:
        return _page('Search', caller, _tag('p', 'no vector indexes', cls='muted'))
    options = [_tag('option', f'{name} (table {table}, key {key})', value=name, data_key=key, data_table=table)
               for name, table, key in indexes]
    form = _tag('form',
                _label('Index', _tag('select', *options, name='index', id='index')),
                _label('Key', _void('input', name='key', id='key', value=indexes[0][2], required=True)),
                _label('Query', _void('input', name='query', id='query', size=40, required=True)),
                _label('n', _void('input', name='n', id='n', type='number', min=1, max=1000, value=10)),
                _label('Filter (JSON)', _void('input', name='filter', id='filter', size=30,
                                              placeholder='{"brand": "a"}')),
                _tag('button', 'Search', type='submit'),
                id='search', cls='search')
    return _page('Search', caller, form, _tag('output', id='search-error', cls='bad', role='status'),
                 _tag('div', id='results'))


def _label(text: str, control: Html) -> Html:
    return _tag('label', _tag('span', text), control)


def _indexes(metadata: Any) -> list[tuple[str, str, str]]:
    """Each vector index's name, source table and its listener's key (the field a text query fills)."""
    found = []
    for name in metadata.identifiers('VectorIndex'):
        ref = (metadata.get('VectorIndex', name)['record'].get('indexing_listener') or {}).get('_ref')
        listener = metadata.get_by_uuid(ref) if ref else None
        record = listener['record'] if listener else {}
        key = record.get('key')
        table = ((record.get('select') or {}).get('_query') or {}).get('table', '?')
        found.append((name, table, key if isinstance(key, str) else ''))
    return found


# ---- login ---------------------------------------------------------------------------------------------------
@router.get('/login')
def login_page(request: Request) -> Response:
    return _login_form(None)


def _login_form(error: str | None, status: int = 200) -> HTMLResponse:
    key = _void('input', name='key', id='key', type='password', autocomplete='off', size=60, required=True,
                autofocus=True)
    form = _tag('form', _label('API key', key),
                _tag('button', 'Log in', type='submit'), method='post', action='/login', cls='login')
    hint = _tag('p', 'Make a key with ', _tag('code', 'superduper apikey create URI NAME --scope read'), cls='muted')
    return _page('Log in', None, _tag('p', error, cls='bad') if error else '', form, hint, status=status)


@router.post('/login')
def login(request: Request, key: str = Form('')) -> Response:
    if _cross_site(request):
        return _login_form('a login from another site is refused', status=403)
    key = key.strip()
    caller = _service(request).keys.caller(key) if key else None
    if caller is None:
        return _login_form('that key is not valid (unknown, malformed or revoked)', status=401)
    response = RedirectResponse('/', status_code=303)
    response.set_cookie(KEY_COOKIE, key, max_age=COOKIE_AGE, path='/', httponly=True, samesite='strict',
                        secure=request.url.scheme == 'https')
    return response


@router.post('/logout')
def logout(request: Request) -> Response:
    if _cross_site(request):
        return Response('a logout from another site is refused', status_code=403, media_type='text/plain')
    response = RedirectResponse('/login', status_code=303)
    response.delete_cookie(KEY_COOKIE, path='/', httponly=True, samesite='strict')
    return response


# ---- static files ----------------------------------------------------------------------------------------------
@router.get('/static/{name}')
def asset(name: str) -> Response:
    if name not in ASSETS:
        return Response('not found', status_code=404, media_type='text/plain')
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name],
                    headers={'Cache-Control': 'max-age=300', 'X-Content-Type-Options': 'nosniff'})
