"""superduper: bring AI models to the databases you already run.

``from superduper import superduper; db = superduper()`` connects to the embedded default. Names are imported
on first use, so ``import superduper`` loads no database driver, SQLAlchemy, numpy or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = '0.1.0'

_EXPORTS = {
    'superduper': 'superduper.runtime.factory',
    'Datalayer': 'superduper.runtime.datalayer',
    'Config': 'superduper.base.config',
    'Document': 'superduper.base.document',
    'LazyArtifact': 'superduper.base.document',
    'Video': 'superduper.base.video',
    'Query': 'superduper.base.query',
    'Cursor': 'superduper.base.query',
    'Component': 'superduper.components.component',
    'DataType': 'superduper.components.datatype',
    'Schema': 'superduper.components.schema',
    'Table': 'superduper.components.table',
    'Model': 'superduper.components.model',
    'ObjectModel': 'superduper.components.model',
    'Metric': 'superduper.components.model',
    'Listener': 'superduper.components.listener',
    'VectorIndex': 'superduper.components.vector_index',
    'KeywordIndex': 'superduper.components.keyword_index',
    'Schedule': 'superduper.components.schedule',
    'TextSplitter': 'superduper.components.text',
    'LLM': 'superduper.components.llm',
    'RAG': 'superduper.components.llm',
    'Application': 'superduper.components.application',
    'Template': 'superduper.components.template',
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from superduper.base.config import Config
    from superduper.runtime.datalayer import Datalayer
    from superduper.runtime.factory import superduper
    from superduper.base.document import Document, LazyArtifact
    from superduper.base.video import Video
    from superduper.base.query import Cursor, Query
    from superduper.components.application import Application
    from superduper.components.component import Component
    from superduper.components.datatype import DataType
    from superduper.components.schedule import Schedule
    from superduper.components.schema import Schema
    from superduper.components.listener import Listener
    from superduper.components.llm import LLM, RAG
    from superduper.components.model import Metric, Model, ObjectModel
    from superduper.components.table import Table
    from superduper.components.text import TextSplitter
    from superduper.components.template import Template
    from superduper.components.vector_index import VectorIndex
    from superduper.components.keyword_index import KeywordIndex


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module superduper has no attribute {name!r}')
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
