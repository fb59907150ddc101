"""Models behind HTTP APIs: OpenAI-compatible embeddings and chat (OpenAI, vLLM, llama.cpp server, Ollama — the
self-hosted toggle is ``base_url``), and Anthropic messages.

Requests are batched, retried with exponential backoff on 429 and 5xx, and time out. API keys are read from the
environment variable a component names (``api_key_env``); the key itself is never stored. Only the standard library
is used, so these need no extra install.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from superduper.base.exceptions import ModelError
from superduper.components.model import Model

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
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            response = self.post('/embeddings', {'model': self.model, 'input': chunk})
            try:
                items = sorted(response['data'], key=lambda item: item['index'])
                vectors = [np.asarray(item['embedding'], dtype=np.float32) for item in items]
            except (KeyError, TypeError, ValueError) as e:
                raise _malformed(self, f'no data[].embedding ({e})') from None
            if len(vectors) != len(chunk):
                raise _malformed(self, f'{len(vectors)} embeddings for {len(chunk)} texts')
            out.extend(vectors)
        return out


@dataclass(eq=False)
class OpenAIChat(HTTPModel):
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
class AnthropicChat(HTTPModel):
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
