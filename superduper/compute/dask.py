"""The Dask engine: listeners' backfills and recomputations, and training, run as tasks on a Dask cluster.

``compute='dask://tcp://host:8786'`` uses a running scheduler; ``compute='dask://local'`` starts a ``LocalCluster``
(``dask://local?n_workers=2&threads_per_worker=1`` passes it arguments; ``?timeout=5`` bounds the connection).

Only the engine calls live here; what tasks carry, how a backfill keeps the workers busy, and what a worker does are
the same for every engine (``superduper.compute.base``). A task on a worker that dies runs again elsewhere (Dask
reschedules it) under the same lease.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from superduper.base.exceptions import ConfigError
from superduper.compute.base import TASK_RETRIES, DistributedCompute

LOCAL_CLUSTER_DEFAULTS: dict[str, Any] = {'threads_per_worker': 1, 'processes': True, 'dashboard_address': ':0'}
#: Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (give freed memory back at once); model inference frees and
#: allocates large buffers on every call, and that setting doubles its system time: local workers keep glibc's default
LOCAL_WORKER_ENVIRONMENT = {'distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_': None}


class DaskComputeBackend(DistributedCompute):
    scheme = 'dask'
    engine = 'Dask'
    examples = "'dask://local' or 'dask://tcp://host:8786'"

    def connect(self, options: dict[str, Any]) -> None:
        import dask
        from distributed import Client, LocalCluster  # ImportError: the registry names the extra to install

        self.cluster: Any = None
        if self.address == 'local':
            try:
                with dask.config.set(LOCAL_WORKER_ENVIRONMENT):
                    self.cluster = LocalCluster(**{**LOCAL_CLUSTER_DEFAULTS, **options})
            except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: a worker refused an option
                raise ConfigError(f'compute={self.uri!r}: cannot start a LocalCluster with {options}: {e}') from None
            self.client = Client(self.cluster, set_as_default=False, timeout=self.timeout)
            return
        if options:
            given = ', '.join(options)
            raise ConfigError(f'compute={self.uri!r}: a scheduler address takes only ?timeout=, got {given}')
        try:
            self.client = Client(self.address, set_as_default=False, timeout=self.timeout)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(
                f'cannot reach the Dask scheduler at {self.address!r} (compute={self.uri!r}): {e}'
            ) from None

    def __repr__(self) -> str:
        if not self.connected:
            return f'DaskComputeBackend({self.uri!r}, closed)'
        started = 'LocalCluster' if self.cluster is not None else 'scheduler'
        address = self.client.scheduler.address
        return f'DaskComputeBackend({self.uri!r}, {started} at {address}, {self.workers()} workers)'

    def workers(self) -> int:
        return len(self.client.nthreads())

    def submit(self, fn: Callable[..., Any], *args: Any, name: str = 'task') -> Any:
        """Run ``fn(*args)`` on the cluster; a ``distributed.Future``."""
        key = f'superduper-{name}-{uuid.uuid4().hex[:12]}'
        return self.client.submit(fn, *args, key=key, pure=False, retries=TASK_RETRIES)

    def first_done(self, handles: list) -> tuple[list, list]:
        from distributed import as_completed

        next(as_completed(handles, loop=self.client.loop))  # this client's loop: it is not the default client
        finished = [f.done() for f in handles]  # asked once: a task may finish meanwhile
        return ([f for f, d in zip(handles, finished) if d], [f for f, d in zip(handles, finished) if not d])

    def result(self, handle: Any) -> Any:
        return handle.result()

    def cancel(self, handles: list) -> None:
        self.client.cancel(handles)

    def on_each_worker(self, fn: Callable[..., Any], *args: Any) -> list:
        return list(self.client.run(fn, *args).values())

    def disconnect(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
