"""Splitting long texts into chunks for embedding: ``TextSplitter('chunks', chunk_size=1000, chunk_overlap=100)``.

The text is cut at the widest boundary there is: paragraphs first, then lines, sentences, words, and only as a last
resort inside a word. Runs of parts that fit are packed into chunks of at most ``chunk_size`` (characters, or
tokens of ``tokenizer``), each chunk starting with up to ``chunk_overlap`` of the end of the one before, so that a
sentence cut between two chunks is whole in one of them; a part too long for a chunk is split the same way at the
next boundary, and its chunks are not packed with its neighbours (a chunk never takes the start of the next
paragraph). Chunks come back in order, without the whitespace at their ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from superduper.base.exceptions import ComponentError
from superduper.components.model import Model

#: boundaries tried in order, widest first: a piece ends after its boundary, so no text is lost
BOUNDARIES: tuple[str, ...] = (r'\n[ \t]*\n\s*', r'\n\s*', r'(?<=[.!?…。])\s+', r'\s+')


@dataclass(eq=False)
class TextSplitter(Model):
    """A model from a text to its chunks (a list of strings, in order). ``tokenizer`` (a callable from a text to
    its tokens, e.g. a Hugging Face tokenizer's ``tokenize`` or tiktoken's ``encode``) measures sizes in tokens;
    without it sizes are characters."""


    chunk_size: int = 1000
    chunk_overlap: int = 100
    tokenizer: Any = None
    boundaries: Sequence[str] = BOUNDARIES

    def __post_init__(self) -> None:
        super().__post_init__()
        what = f'TextSplitter {self.identifier!r}'
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ComponentError(f'{what}: chunk_size is a whole number >= 1, got {self.chunk_size!r}')
        if isinstance(self.chunk_overlap, bool) or not isinstance(self.chunk_overlap, int) \
                or not 0 <= self.chunk_overlap < self.chunk_size:
            raise ComponentError(f'{what}: chunk_overlap is a whole number from 0 to below chunk_size '
                                 f'({self.chunk_size}), got {self.chunk_overlap!r}')
        if self.tokenizer is not None and not callable(self.tokenizer):
            raise ComponentError(f'{what}: tokenizer is a callable from a text to its tokens, got '
                                 f'{type(self.tokenizer).__name__}')
        for pattern in self.boundaries:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ComponentError(f'{what}: boundary {pattern!r} is not a regular expression ({e})') from None
        self.boundaries = tuple(self.boundaries)

    def predict(self, text: Any) -> list[str]:
        if text is None:
            return []
        if not isinstance(text, str):
            raise ComponentError(f'TextSplitter {self.identifier!r} splits text, got {type(text).__name__}')
        chunks = self._split(text, self.boundaries)
        return [c.strip() for c in chunks if c.strip()]

    def _length(self, text: str) -> int:
        return len(text) if self.tokenizer is None else len(self.tokenizer(text))

    def _split(self, text: str, boundaries: tuple[str, ...]) -> list[str]:
        """Chunks of ``text``: cut at the widest boundary, runs of small parts packed together, and each part too
        long for a chunk split again at the next boundary (its chunks are not packed with its neighbours: a chunk
        never takes the start of the next paragraph)."""
        if self._length(text) <= self.chunk_size:
            return [text]
        if not boundaries:
            return _hard_cut(text, self.chunk_size, self._length)
        chunks: list[str] = []
        run: list[str] = []
        for part in _cut_after(text, boundaries[0]):
            if self._length(part) <= self.chunk_size:
                run.append(part)
                continue
            chunks += _pack(run, self.chunk_size, self.chunk_overlap, self._length)
            chunks += self._split(part, boundaries[1:])
            run = []
        return chunks + _pack(run, self.chunk_size, self.chunk_overlap, self._length)


def _cut_after(text: str, pattern: str) -> list[str]:
    """``text`` cut after each match of ``pattern`` (the boundary stays with the piece before it)."""
    ends = [m.end() for m in re.finditer(pattern, text) if 0 < m.end() < len(text)]
    starts = [0, *ends]
    return [text[a:b] for a, b in zip(starts, [*ends, len(text)]) if a < b]


def _hard_cut(text: str, size: int, length: Callable[[str], int]) -> list[str]:
    """Cut where there is no boundary left: the longest prefix within ``size``, again and again."""
    out = []
    while text:
        low, high = 1, len(text)  # the longest prefix that fits (at least one character)
        while low < high:
            middle = (low + high + 1) // 2
            if length(text[:middle]) <= size:
                low = middle
            else:
                high = middle - 1
        out.append(text[:low])
        text = text[low:]
    return out


def _pack(pieces: list[str], size: int, overlap: int, length: Callable[[str], int]) -> list[str]:
    """Consecutive pieces joined into chunks of at most ``size``; each chunk starts with the last pieces of the one
    before, as many as fit in ``overlap``."""
    chunks: list[str] = []
    window: list[tuple[str, int]] = []
    total = 0
    for piece in pieces:
        n = length(piece)
        if window and total + n > size:
            chunks.append(''.join(p for p, _ in window))
            while window and (total > overlap or total + n > size):
                total -= window.pop(0)[1]
        window.append((piece, n))
        total += n
    if window:
        chunks.append(''.join(p for p, _ in window))
    return chunks
