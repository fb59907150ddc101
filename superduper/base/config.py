"""Configuration: keyword arguments, then ``SUPERDUPER_*`` environment variables, then ``superduper.yaml``."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_HOME = '.superduper'


def config_file() -> str:
    return os.environ.get('SUPERDUPER_CONFIG', 'superduper.yaml')


class Config(BaseSettings):
    """Every setting of a ``Datalayer``; ``superduper(uri, **overrides)`` fills it."""

    model_config = SettingsConfigDict(env_prefix='SUPERDUPER_', extra='forbid', validate_assignment=True)

    data_backend: str = Field(
        default=f'sqlite://{DEFAULT_HOME}/data.db', description='URI of the database holding the data'
    )
    artifact_store: str | None = Field(
        default=None, description='where artifacts go; default: the filesystem under the data home'
    )
    metadata_store: str | None = Field(default=None, description='URI of the metadata database; default: the data backend')
    compute: str = Field(default='local', description="'local', 'dask://tcp://host:8786' or 'ray://host:6379'")
    outputs: Literal['sync', 'async'] = Field(
        default='sync', description="'sync': a write through this process computes its listeners' outputs before "
        "execute() returns (models load here); 'async': it only records its changes and workers (superduper "
        "start) compute them. A listener's own sync= overrides this"
    )
    home: str = Field(default=DEFAULT_HOME, description='folder for the embedded default and local caches')
    read_batch_size: int = Field(default=2000, gt=0, description='rows fetched per round trip when reading')
    insert_batch_size: int = Field(default=10000, gt=0, description='rows sent per statement when inserting')
    valid_fraction: float = Field(default=0.05, ge=0, le=1, description="share of new rows given _fold='valid'")
    exact_filter_limit: int = Field(
        default=20000, gt=0, description='most rows a filtered vector search scores exactly; more matching rows go through the ANN index'
    )
    follow_changes: bool = Field(
        default=True, description='follow writes by other clients in a background thread (embedded/local mode)'
    )
    poll_interval: float = Field(default=0.5, gt=0, description='seconds between looks for new changes when idle')
    poll_by: dict[str, str] = Field(
        default_factory=dict, description="databases followed by polling: per table, a column every writer sets to a "
        "larger value on each insert and update (an updated_at timestamp, a version number); polls then compare only "
        "the rows past the last value seen (and all keys, for deletes) instead of hashing every row"
    )
    poll_lookback: float = Field(
        default=300.0, gt=0, description="with poll_by: how long another client's transaction may run between setting "
        "the column and committing and still be seen (polls reread the rows set since the largest value seen that "
        "long ago)"
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description='how long a claimed batch of changes, or a schedule\'s tick, stays with its '
        'consumer without news from it (renewed while it computes); a dead consumer\'s work goes to another after that'
    )
    max_attempts: int = Field(default=3, ge=1, description='tries of a failing row before it stays failed')
    retry_delay: float = Field(default=2.0, ge=0, description='seconds before the first retry; doubled each time')
    progress: bool = Field(default=True, description='show progress bars for backfills')

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_settings = YamlConfigSettingsSource(settings_cls, yaml_file=config_file())
        return init_settings, env_settings, yaml_settings


def load_config(**overrides: Any) -> Config:
    """Build the configuration; ``None`` values in ``overrides`` mean 'not given'."""
    return Config(**{k: v for k, v in overrides.items() if v is not None})
