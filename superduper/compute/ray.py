"""The Ray engine: listeners' backfills and recomputations, and training, run by Ray actors.

``compute='ray://local'`` starts a Ray instance in this process (``ray://local?num_cpus=2&object_store_memory=
200000000`` passes ``ray.init`` arguments), or uses the one this process already started; ``compute='ray://host:6379'``
joins a running cluster at its head's address (what ``ray start --head`` prints) as a driver. ``?workers=N`` sets how
many actors compute (default: the cluster's CPUs; each actor takes one); ``?timeout=5`` bounds reaching the head.

Each actor is one worker process: it keeps one datalayer per client session, with the models it loads, between tasks
(``superduper.compute.base`` does the work, the same for every engine); the clients of one process share the actors,
which stop when the last of them closes. Tasks go to the actor with the fewest queued;
an actor whose process dies is restarted by Ray and its queued and running tasks are run again (``max_restarts``,
``max_task_retries``) under the same lease, and the keyed, guarded output write stores each output once.

Offline and quiet by default: usage statistics off, no dashboard, the object store capped. Ray (2.59 and later)
authenticates local instances with a token it writes to ``~/.ray/auth_token``; joining a running cluster sends that
token (or ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``) when one exists and ``RAY_AUTH_MODE`` is not set.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable

from superduper.base.exceptions import ConfigError
from superduper.compute.base import TASK_RETRIES, DistributedCompute

LOCAL_DEFAULTS: dict[str, Any] = {'include_dashboard': False, 'object_store_memory': 200 * 1024 * 1024,
                                  'log_to_driver': False}
ACTOR_START_TIMEOUT = 60.0  # seconds for the worker actors to start, unless ?timeout= says
RAY_ENVIRONMENT = {'RAY_USAGE_STATS_ENABLED': '0'}  # read when Ray starts: no usage report attempts offline

_lock = threading.Lock()
#: this process's Ray connection (Ray is one per process): the backends using it, whether one of them started Ray,
#: and the worker actors they share (kept between clients, as a Dask cluster's workers are)
_shared: dict[str, Any] = {'count': 0, 'started_here': False, 'actors': []}


class Worker:
    """A Ray actor: one worker process running the shared task functions (their datalayers live in the process)."""

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class RayComputeBackend(DistributedCompute):
    scheme = 'ray'
    engine = 'Ray'
    examples = "'ray://local' or 'ray://host:6379'"

    def connect(self, options: dict[str, Any]) -> None:
        for name, value in RAY_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        import ray  # ImportError: the registry names the extra to install

        wanted = options.pop('workers', None)
        with _lock:
            self._join(ray, options)
            _shared['count'] += 1
            self.started_here = _shared['started_here']
            count = max(1, int(wanted) if wanted else int(ray.cluster_resources().get('CPU', 1)))
            actor = ray.remote(Worker).options(num_cpus=1, max_restarts=-1, max_task_retries=TASK_RETRIES)
            pool = _shared['actors']
            pool += [actor.remote() for _ in range(count - len(pool))]
            self.actors = pool[:count]
        self.gcs_address = ray.get_runtime_context().gcs_address
        self.queued = [0] * len(self.actors)  # tasks sent to each actor and not yet collected
        self.sent: dict[Any, int] = {}  # task -> its actor's index
        self.balance = threading.Lock()  # a write's follow-up and the background consumer may send at once
        self._started(ray)

    def _started(self, ray: Any) -> None:
        """Wait for the actors: one that never starts (no CPU free for it) is an error now, not a task that hangs."""
        timeout = self.timeout if 'timeout=' in self.uri else ACTOR_START_TIMEOUT
        refs = [a.run.remote(os.getpid) for a in self.actors]
        started, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(started) < len(self.actors):
            message = (f'compute={self.uri!r}: {len(started)} of {len(self.actors)} Ray workers started (each takes '
                       f"one CPU; {ray.available_resources().get('CPU', 0):g} free): ask for fewer with ?workers=")
            with _lock:  # the actors that found no CPU are not kept
                idle = [a for a, ref in zip(self.actors, refs) if ref not in started]
                _shared['actors'] = [a for a in _shared['actors'] if not any(a is i for i in idle)]
            for actor in idle:
                ray.kill(actor)
            self.disconnect()
            raise ConfigError(message)

    def _join(self, ray: Any, options: dict[str, Any]) -> None:
        if self.address != 'local':
            if options:
                raise ConfigError(f'compute={self.uri!r}: a cluster address takes only ?workers= and ?timeout=, '
                                  f'got {", ".join(options)}')
            _reachable(self.address, self.timeout, self.uri)
        if ray.is_initialized():
            if options or (self.address != 'local' and not _same_address(ray, self.address)):
                raise ConfigError(f'compute={self.uri!r}: this process already uses the Ray instance at '
                                  f"{ray.get_runtime_context().gcs_address}; use 'ray://local' to compute on it")
            return
        if self.address == 'local':
            try:
                ray.init(**{**LOCAL_DEFAULTS, **options})
            except (TypeError, ValueError, RuntimeError) as e:
                raise ConfigError(f'compute={self.uri!r}: cannot start Ray with {options}: {e}') from None
            _shared['started_here'] = True
            return
        _send_token_if_any()
        try:
            ray.init(address=self.address, log_to_driver=False)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError or its AuthenticationError
            raise ConfigError(f'cannot join the Ray cluster at {self.address!r} (compute={self.uri!r}): '
                              f'{str(e).splitlines()[0]}') from None
        _shared['started_here'] = False

    def __repr__(self) -> str:
        if not self.connected:
            return f'RayComputeBackend({self.uri!r}, closed)'
        started = 'started here' if self.started_here else 'cluster'
        return f'RayComputeBackend({self.uri!r}, {started} at {self.gcs_address}, {self.workers()} workers)'

    def workers(self) -> int:
        return len(self.actors)

    def submit(self, fn: Callable[..., Any], *args: Any, name: str = 'task') -> Any:
        """Run ``fn(*args)`` on the actor with the fewest tasks queued; a ``ray.ObjectRef``."""
        with self.balance:
            index = min(range(len(self.actors)), key=self.queued.__getitem__)
            ref = self.actors[index].run.options(name=f'superduper-{name}', retry_exceptions=True).remote(fn, *args)
            self.queued[index] += 1
            self.sent[ref] = index
        return ref

    def first_done(self, handles: list) -> tuple[list, list]:
        import ray

        done, pending = ray.wait(handles, num_returns=1)
        for ref in done:
            self._collected(ref)
        return done, pending

    def result(self, handle: Any) -> Any:
        import ray

        return ray.get(handle)

    def cancel(self, handles: list) -> None:
        import ray

        for ref in handles:
            self._collected(ref)
            try:
                ray.cancel(ref)
            except Exception:  # a task already running on an actor finishes; its result is dropped
                pass

    def _collected(self, ref: Any) -> None:
        with self.balance:
            index = self.sent.pop(ref, None)
            if index is not None:
                self.queued[index] -= 1

    def on_each_worker(self, fn: Callable[..., Any], *args: Any) -> list:
        import ray

        return ray.get([actor.run.remote(fn, *args) for actor in self.actors])

    def disconnect(self) -> None:
        import ray

        self.actors, self.sent = [], {}
        with _lock:
            _shared['count'] -= 1
            if _shared['count'] > 0:
                return
            for actor in _shared['actors']:
                ray.kill(actor)
            _shared['actors'] = []
            if _shared['started_here']:
                ray.shutdown()
                _shared['started_here'] = False


def _same_address(ray: Any, address: str) -> bool:
    host, _, port = address.rpartition(':')
    current = ray.get_runtime_context().gcs_address
    known_host, _, known_port = current.rpartition(':')
    local = {'127.0.0.1', 'localhost', known_host}
    return port == known_port and (host == known_host or host in local)


def _reachable(address: str, timeout: float, uri: str) -> None:
    """A clear error, at once, for a head nobody answers at (Ray itself retries for a minute)."""
    host, _, port = address.rpartition(':')
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(f'cannot reach the Ray cluster at {address!r} (compute={uri!r}): {e}') from None


def _send_token_if_any() -> None:
    """Joining a cluster: authenticate with the token Ray keeps, if there is one (Ray sends none unless told)."""
    if 'RAY_AUTH_MODE' in os.environ:
        return
    path = os.environ.get('RAY_AUTH_TOKEN_PATH') or os.path.expanduser('~/.ray/auth_token')
    if os.environ.get('RAY_AUTH_TOKEN') or os.path.exists(path):
        os.environ['RAY_AUTH_MODE'] = 'token'
