"""``LLM``: a text-generating model with a prompt template; ``RAG``: retrieve with a vector index, then generate.

Both are models, so they serve ``db.predict`` and listeners alike; the generating model inside is any model turning a
prompt into text (``OpenAIChat``, ``AnthropicChat``, a local one), which is the self-hosted toggle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from superduper.base.exceptions import ComponentError
from superduper.components.model import Model


def _check_llm(owner: Model) -> None:
    llm = getattr(owner, 'llm')
    if not isinstance(llm, Model):
        raise ComponentError(f'{type(owner).__name__} {owner.identifier!r}: llm= must be a Model, got {type(llm).__name__}')


@dataclass(eq=False)
class LLM(Model):
    """``LLM('summarise', llm=OpenAIChat(...), prompt='Summarise in one line: {x}')``: ``{x}`` is the (first) input;
    keyword inputs fill the fields of the same name."""

    llm: Any = None
    prompt: str = '{x}'

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_llm(self)

    def predict(self, *args: Any, **kwargs: Any) -> str:
        try:
            prompt = self.prompt.format(*args, **({'x': args[0]} if args else {}), **kwargs)
        except (KeyError, IndexError) as e:
            raise ComponentError(f'LLM {self.identifier!r}: the prompt needs {e}, which the input lacks') from None
        return self.llm.predict(prompt)


DEFAULT_RAG_PROMPT = (
    'Answer the question using only the context.\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:'
)


@dataclass(eq=False)
class RAG(Model):
    """``RAG('ask-docs', llm=OpenAIChat(...), vector_index='docs-index', key='txt', n=5)``: the ``n`` rows nearest to
    the question (by the index) become the context of the prompt."""

    llm: Any = None
    vector_index: str = ''
    key: str = ''
    n: int = 5
    prompt: str = DEFAULT_RAG_PROMPT
    _db: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_llm(self)
        if not self.vector_index or not self.key:
            raise ComponentError(f'RAG {self.identifier!r}: give vector_index= and key= (the field put in the context)')

    def on_create(self, db: Any) -> None:
        db.vector_indexes.get(self.vector_index)  # an unknown index fails here, listing those that exist
        self._db = db

    def on_load(self, db: Any) -> None:
        self._db = db

    def retrieve(self, question: str) -> list[dict]:
        if self._db is None:
            raise ComponentError(f'RAG {self.identifier!r}: apply it to a database (db.apply) before asking')
        table = self._db.vector_indexes.get(self.vector_index).component.source
        query = self._db[table].like({self.key: question}, vector_index=self.vector_index, n=self.n).select(self.key)
        return query.execute().tolist()

    def predict(self, question: str) -> str:
        context = '\n'.join(f'- {row[self.key]}' for row in self.retrieve(question))
        return self.llm.predict(self.prompt.format(context=context, question=question))
