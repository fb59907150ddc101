"""``superduper()``: connect to a database and wire its metadata store, artifact store and compute into a
``Datalayer``."""

from __future__ import annotations

import logging
import os
from typing import Any

from superduper.base.config import Config, load_config
from superduper.base.exceptions import ConfigError, QueryError
from superduper.runtime.datalayer import Datalayer

log = logging.getLogger('superduper')


def superduper(uri: str | None = None, **overrides: Any) -> Datalayer:
    """Connect: ``superduper()`` (embedded SQLite under ./.superduper), ``superduper('postgresql://...')``, ...

    Keyword arguments override settings (``artifact_store=``, ``metadata_store=``, ``compute=``, ...); then
    ``SUPERDUPER_*`` environment variables; then ``superduper.yaml``. ``session=`` hands a folder
    (``parquet://...?engine=pyspark``) a running engine: a ``SparkSession``, a DuckDB connection, a DataFusion
    ``SessionContext``.
    """
    from superduper.backends.registry import connect_compute, connect_data_backend, data_backend_of

    databackend = None
    if uri is not None and not isinstance(uri, str):
        databackend = data_backend_of(uri)  # seed 002: superduper(pymongo.MongoClient().my_db)
        if databackend is not None:
            uri = databackend.uri
        elif hasattr(uri, 'fit') and hasattr(uri, 'predict'):  # seed 002: superduper(SVC()) wraps an estimator
            from superduper.ext.sklearn import SklearnModel

            return SklearnModel(type(uri).__name__.lower(), object=uri)  # type: ignore[return-value]
        else:
            raise QueryError('superduper() takes a database URI string, a dict of DataFrames, a pymongo Database or '
                             f'a scikit-learn estimator, got {type(uri).__name__}')
    session = overrides.pop('session', None)
    cfg = load_config(data_backend=uri, **overrides)
    databackend = databackend or connect_data_backend(cfg.data_backend, session)
    if cfg.outputs == 'async' and not databackend.capabilities.workers_follow:
        databackend.close()
        raise ConfigError(f"outputs='async' leaves outputs to workers, which follow the changes the database "
                          f'records; {databackend!r} records none: use outputs=\'sync\'')
    if cfg.metadata_store in (None, cfg.data_backend):
        metadata = databackend.metadata_store()
    else:
        metadata = connect_data_backend(cfg.metadata_store).metadata_store()
    # before the artifact store is recorded: a refused one changes nothing
    compute = connect_compute(cfg.compute, cfg, databackend)
    try:
        artifact_store = _artifact_store(cfg, databackend, metadata)
    except Exception:
        compute.close()
        raise
    db = Datalayer(databackend, metadata, artifact_store, compute, cfg)
    if cfg.follow_changes and cfg.outputs == 'sync' and databackend.capabilities.follows_other_writers:
        db.listening.records()  # following starts on opening: changes made meanwhile by others are computed now
    return db


def _artifact_store(cfg: Config, databackend: Any, metadata: Any) -> Any:
    """The store named in the settings; else the one this database recorded when it was first used, so that every
    client (a CLI run from another folder, a worker) finds the same artifacts; else the database's own store
    (GridFS on MongoDB) or the filesystem under the home folder. The choice is recorded for the next clients."""
    from superduper.backends.artifacts import ArtifactStore
    from superduper.backends.registry import connect_artifact_store

    cache_dir = os.path.join(cfg.home, 'cache')
    recorded = metadata.setting('artifact_store')
    if cfg.artifact_store:
        store = connect_artifact_store(cfg.artifact_store, cache_dir)
    elif recorded:
        store = connect_artifact_store(recorded, cache_dir)
    else:
        store = databackend.default_artifact_store(cache_dir) or ArtifactStore(
            f'filesystem://{os.path.join(cfg.home, "artifacts")}', cache_dir=cache_dir)
    if store.location and store.location != recorded:
        if recorded:
            log.warning('artifact store %s replaces %s as the one recorded for this database', store.location, recorded)
        metadata.set_setting('artifact_store', store.location)
    return store

