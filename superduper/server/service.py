"""What every request of one server shares (``Service``), and who may make it (``requires``)."""

from __future__ import annotations

import threading
import time
from typing import Any, Awaitable, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from superduper.base.exceptions import SuperduperError
from superduper.server import errors
from superduper.server.keys import ApiKeys, Caller
from superduper.server.metrics import Metrics
from superduper.server.settings import ServeSettings

KEY_COOKIE = 'superduper_key'
#: a console request changing something carries this header, which another site's page cannot send (CSRF)
CONSOLE_HEADER = 'x-superduper-console'


class Service:
    """What every request of one server shares: the datalayer, the settings, the keys, the metrics, and caches of
    components and of listener status (both follow the database: applied or removed components within a poll
    interval, status within ``status_cache_seconds``)."""

    def __init__(self, db: Any, settings: ServeSettings):
        self.db = db
        self.settings = settings
        self.keys = ApiKeys(db.metadata)
        self.metrics = Metrics(self.status)
        self._components: dict[tuple[str, str], Any] = {}
        self._generation = db.components_generation()
        self._status: tuple[float, list[dict]] = (-1e9, [])
        self._lock = threading.Lock()

    def component(self, type_id: str, identifier: str) -> Any:
        """The latest version of a component, loaded once per version."""
        generation = self.db.components_generation()
        with self._lock:
            if generation != self._generation:
                self._components.clear()
                self._generation = generation
            found = self._components.get((type_id, identifier))
        if found is None:
            found = self._load(type_id, identifier)
            with self._lock:
                self._components[(type_id, identifier)] = found
        return found

    def _load(self, type_id: str, identifier: str) -> Any:
        try:
            return self.db.load(type_id, identifier)
        except SuperduperError:
            raise
        except Exception as e:  # its code needs what this process lacks (a module, a package): say so, not a 500
            errors.log.warning('%s %r cannot be loaded here', type_id, identifier, exc_info=e)
            raise errors.HTTPProblem(503, f'{type_id} {identifier!r} cannot be loaded by this server: '
                                     f'{type(e).__name__}: {str(e)[:300]}') from None

    def components_changed(self) -> None:
        """After this server applied or removed a component: load what is current from the next request on."""
        self.db.components_generation(fresh=True)
        with self._lock:
            self._components.clear()

    def status(self) -> list[dict]:
        at, report = self._status
        if time.monotonic() - at >= self.settings.status_cache_seconds:
            report = self.db.status()
            self._status = (time.monotonic(), report)
        return report

    def key_of(self, request: Request) -> str | None:
        """The key in ``Authorization: Bearer``, ``X-API-Key`` or the console's cookie (the cookie only for reads,
        or with the console's header)."""
        header = request.headers.get('authorization', '')
        key = header[7:].strip() if header.lower().startswith('bearer ') else request.headers.get('x-api-key')
        if not key and (cookie := request.cookies.get(KEY_COOKIE)):
            if request.method in ('GET', 'HEAD') or request.headers.get(CONSOLE_HEADER):
                key = cookie
        return key

    def caller(self, request: Request) -> Caller:
        """Who is asking: the owner of the request's key (``key_of``); without a key, the anonymous scope if one is
        allowed."""
        key = self.key_of(request)
        if key:
            found = self.keys.caller(key)
            if found is None:
                raise errors.HTTPProblem(401, 'the API key is not valid (unknown, malformed or revoked)',
                                         {'WWW-Authenticate': 'Bearer'})
            return found
        if self.settings.anonymous == 'none':
            raise errors.HTTPProblem(401, 'an API key is needed (Authorization: Bearer <key>); make one with '
                                     '`superduper apikey create URI NAME --scope read`', {'WWW-Authenticate': 'Bearer'})
        return Caller(None, 'anonymous', self.settings.anonymous)


def requires(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """A route dependency: the caller, if its scope includes ``scope`` (401 without a valid key, 403 without the
    scope)."""

    async def check(request: Request) -> Caller:  # async: a key checked moments ago costs no thread
        service = request.app.state.service
        key = service.key_of(request)
        caller = service.keys.checked(key) if key else None
        if caller is None:
            caller = await run_in_threadpool(service.caller, request)  # reads the metadata
        if not caller.allows(scope):
            raise errors.HTTPProblem(403, f'this needs the {scope!r} scope; the caller {caller.name!r} has '
                                     f'{caller.scope!r}')
        return caller

    return check
