"""Models behind HTTP APIs: OpenAI-compatible embeddings and chat (OpenAI, vLLM, llama.cpp server, Ollama — the
self-hosted toggle is ``base_url``), Anthropic messages, Cohere embeddings (API v2) and rerankers (Cohere, and the
``/rerank`` endpoint of vLLM, Jina, TEI and other OpenAI-compatible servers).

Requests are batched (a chat model sends a batch's prompts concurrently), retried with exponential backoff on 429 and 5xx, and time out. API keys are read from the
environment variable a component names (``api_key_env``); the key itself is never stored. Only the standard library
is used, so these need no extra install.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from superduper.base.exceptions import ModelError
from superduper.components.model import Model, Reranker

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(eq=False)
class HTTPModel(Model):
    base_url: str = ''
    api_key_env: str | None = None
    timeout: float = 60.0
    max_retries: int = 5
    retry_delay: float = 0.5

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ModelError(f'model {self.identifier!r}: set the API key in the environment variable {self.api_key_env}')
        return key

    def headers(self) -> dict[str, str]:
        key = self._key()
        return {'Authorization': f'Bearer {key}'} if key else {}

    def post(self, path: str, body: dict) -> Any:
        """POST JSON, retrying what a retry can fix; any other failure is a ``ModelError`` naming the model."""
        url = self.base_url.rstrip('/') + path
        data = json.dumps(body).encode()
        headers = {'Content-Type': 'application/json', **self.headers()}
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method='POST')
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUS or attempt == self.max_retries:
                    detail = e.read()[:300].decode(errors='replace')
                    raise ModelError(f'model {self.identifier!r}: {url} answered {e.code}: {detail}') from None
                delay = _retry_after(e) or self.retry_delay * 2**attempt
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.max_retries:
                    raise ModelError(f'model {self.identifier!r}: cannot reach {url}: {e}') from None
                delay = self.retry_delay * 2**attempt
            time.sleep(delay)
        try:
            return json.loads(payload)
        except ValueError:
            raise ModelError(f'model {self.identifier!r}: {url} answered with something that is not JSON') from None


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return float(error.headers.get('Retry-After'))
    except (TypeError, ValueError):
        return None


def _malformed(model: HTTPModel, what: str) -> ModelError:
    return ModelError(f'model {model.identifier!r}: malformed response from {model.base_url}: {what}')


@dataclass(eq=False)
class OpenAIEmbedding(HTTPModel):
    """``/embeddings``: texts in, float32 vectors out, ``batch_size`` texts a request."""

    model: str = 'text-embedding-3-small'
    base_url: str = 'https://api.openai.com/v1'
    api_key_env: str | None = 'OPENAI_API_KEY'
    batch_size: int = 100
    dimensions: int | None = None  # the length of the vectors, if known; else found out with one request

    def output_type(self) -> Any:
        """``vector[float32:dimensions]``; without ``dimensions``, one text is embedded to find out (``None`` if that
        fails, e.g. the API is unreachable: the first successful outputs fix the type then)."""
        if self.datatype is not None:
            return self.datatype
        if self.dimensions is not None:
            return f'vector[float32:{self.dimensions}]'
        try:
            return f'vector[float32:{len(self.predict("dimension"))}]'
        except Exception:
            return None

    def predict(self, text: str) -> np.ndarray:
        return self.predict_batches([text])[0]

    def predict_batches(self, texts: Sequence[str]) -> list:
        out: list = []
        size = self._chunk_size()
        for i in range(0, len(texts), size):
            chunk = list(texts[i : i + size])
            vectors = self._embed(chunk)
            if len(vectors) != len(chunk):
                raise _malformed(self, f'{len(vectors)} embeddings for {len(chunk)} texts')
            out.extend(vectors)
        return out

    def _chunk_size(self) -> int:
        return self.batch_size

    def _embed(self, chunk: list[str]) -> list[np.ndarray]:
        response = self.post('/embeddings', {'model': self.model, 'input': chunk})
        try:
            items = sorted(response['data'], key=lambda item: item['index'])
            return [np.asarray(item['embedding'], dtype=np.float32) for item in items]
        except (KeyError, TypeError, ValueError) as e:
            raise _malformed(self, f'no data[].embedding ({e})') from None


@dataclass(eq=False)
class CohereEmbedding(OpenAIEmbedding):
    """Cohere ``/v2/embed``: texts in, float32 vectors out, at most 96 texts a request (Cohere's limit).

    ``embed_input_type`` is Cohere's ``input_type``: ``'search_document'`` for stored texts, ``'search_query'`` for
    a model that embeds queries."""

    model: str = 'embed-english-v3.0'
    base_url: str = 'https://api.cohere.com'
    api_key_env: str | None = 'COHERE_API_KEY'
    batch_size: int = 96
    embed_input_type: str = 'search_document'

    def _chunk_size(self) -> int:
        return max(1, min(self.batch_size, COHERE_MAX_TEXTS))

    def _embed(self, chunk: list[str]) -> list[np.ndarray]:
        body = {'model': self.model, 'texts': chunk, 'input_type': self.embed_input_type, 'embedding_types': ['float']}
        response = self.post('/v2/embed', body)
        try:
            return [np.asarray(v, dtype=np.float32) for v in response['embeddings']['float']]
        except (KeyError, TypeError, ValueError) as e:
            raise _malformed(self, f'no embeddings.float ({e})') from None


COHERE_MAX_TEXTS = 96


@dataclass(eq=False)
class HTTPChat(HTTPModel):
    """A chat model whose ``predict_batches`` sends up to ``max_concurrency`` prompts at once, each with its own
    retries; outputs keep the inputs' order and the first failure (in input order) fails the batch."""

    #: optional, so the uuids of components declared before it existed do not change
    max_concurrency: int = field(default=8, metadata={'optional': True})

    def predict_batches(self, prompts: Sequence[str]) -> list:
        workers = max(1, min(int(self.max_concurrency), len(prompts)))
        if workers == 1:
            return [self.predict(p) for p in prompts]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f'chat-{self.identifier}')
        try:
            return list(pool.map(self._predict_one, prompts))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a failure stops the prompts not yet sent

    def _predict_one(self, prompt: str) -> str:
        try:
            return self.predict(prompt)
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f'model {self.identifier!r}: {type(e).__name__}: {e}') from e


@dataclass(eq=False)
class OpenAIChat(HTTPChat):
    """``/chat/completions``: a prompt in, the reply's text out."""

    model: str = 'gpt-4o-mini'
    base_url: str = 'https://api.openai.com/v1'
    api_key_env: str | None = 'OPENAI_API_KEY'
    system: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    batch_size: int = 8

    def predict(self, prompt: str) -> str:
        messages = ([{'role': 'system', 'content': self.system}] if self.system else []) + [
            {'role': 'user', 'content': prompt}
        ]
        body: dict[str, Any] = {'model': self.model, 'messages': messages, 'temperature': self.temperature}
        if self.max_tokens is not None:
            body['max_tokens'] = self.max_tokens
        response = self.post('/chat/completions', body)
        try:
            return response['choices'][0]['message']['content']
        except (KeyError, IndexError, TypeError):
            raise _malformed(self, 'no choices[0].message.content') from None


@dataclass(eq=False)
class AnthropicChat(HTTPChat):
    """Anthropic ``/v1/messages``: a prompt in, the reply's text out."""

    model: str = 'claude-3-5-haiku-latest'
    base_url: str = 'https://api.anthropic.com/v1'
    api_key_env: str | None = 'ANTHROPIC_API_KEY'
    system: str | None = None
    max_tokens: int = 1024
    anthropic_version: str = '2023-06-01'
    batch_size: int = 8

    def headers(self) -> dict[str, str]:
        key = self._key()
        return {'anthropic-version': self.anthropic_version, **({'x-api-key': key} if key else {})}

    def predict(self, prompt: str) -> str:
        body: dict[str, Any] = {'model': self.model, 'max_tokens': self.max_tokens,
                                'messages': [{'role': 'user', 'content': prompt}]}
        if self.system:
            body['system'] = self.system
        response = self.post('/messages', body)
        try:
            return ''.join(block['text'] for block in response['content'] if block.get('type') == 'text')
        except (KeyError, TypeError):
            raise _malformed(self, 'no content[].text') from None


@dataclass(eq=False)
class OpenAIRerank(HTTPModel, Reranker):
    """``POST {base_url}/rerank`` as vLLM, Jina, TEI and other OpenAI-compatible servers serve it: a query and
    documents in, one relevance score per document out (higher is better). ``top_n`` asks for the best n only; the
    others score ``-inf``."""

    model: str = 'BAAI/bge-reranker-base'
    base_url: str = 'http://localhost:8000/v1'
    api_key_env: str | None = None
    top_n: int | None = None
    path: str = '/rerank'

    def predict(self, query: str, documents: Sequence[str]) -> list[float]:
        documents = list(documents)
        if not documents:
            return []
        body = {'model': self.model, 'query': query, 'documents': documents,
                'top_n': min(self.top_n or len(documents), len(documents))}
        return _scores(self, self.post(self.path, body), len(documents))


@dataclass(eq=False)
class CohereRerank(OpenAIRerank):
    """Cohere ``/v2/rerank``: a query and documents in, one relevance score per document out."""

    model: str = 'rerank-v3.5'
    base_url: str = 'https://api.cohere.com'
    api_key_env: str | None = 'COHERE_API_KEY'
    path: str = '/v2/rerank'


def _scores(model: HTTPModel, response: Any, count: int) -> list[float]:
    """Scores in the documents' order from ``{"results": [{"index", "relevance_score"}]}`` (Cohere, vLLM, Jina) or a
    bare list of ``{"index", "score"}`` (TEI)."""
    results = response.get('results') if isinstance(response, dict) else response
    scores = [float('-inf')] * count
    try:
        for item in results:
            score = item['relevance_score'] if 'relevance_score' in item else item['score']
            scores[int(item['index'])] = float(score)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _malformed(model, f'no results[].index/relevance_score ({type(e).__name__}: {e})') from None
    return scores
