"""Models of the console's browser test, importable by the server process it starts (no lambdas: stored code is
a module-level function the server imports)."""

from __future__ import annotations

VOWELS = 'aeiou'


def vowels(text: str) -> list[float]:
    """A tiny deterministic embedding: how often each vowel occurs, plus one (never the zero vector)."""
    return [1.0 + text.count(c) for c in VOWELS]


def shout(text: str) -> str:
    """Fails on rows containing 'bad', so the console has failures to show."""
    if 'bad' in text:
        raise ValueError(f'cannot shout {text!r}')
    return text.upper()


def vowels_squared(text: str) -> list[float]:
    """Another embedding of the same length: a new model version for an index to switch to."""
    return [(1.0 + text.count(c)) ** 2 for c in VOWELS]
