"""The signs of vectors' values as packed bits, and how many differ from a query's: a coarse first cut that costs a
popcount per 64 values (binary quantisation, and the rows a filter matched in an HNSW index)."""

from __future__ import annotations

from typing import Any

import numpy as np


def width(dim: int) -> int:
    """Bytes of packed signs per vector: whole 64-bit words, counted a word at a time."""
    return (dim + 63) // 64 * 8


def pack_signs(values: Any, dim: int) -> np.ndarray:
    """Rows of packed bits, one per row of ``values`` (set where the value is above zero), ``width(dim)`` bytes."""
    values = np.asarray(values)
    packed = np.zeros((len(values), width(dim)), dtype=np.uint8)
    bits = np.packbits(values > 0, axis=1)
    packed[:, : bits.shape[1]] = bits
    return packed


def hamming(packed: np.ndarray, q: np.ndarray) -> np.ndarray:
    """How many signs of each packed row differ from the query's."""
    query = pack_signs(q[None, :], len(q))[0]
    return np.bitwise_count(packed.view(np.uint64) ^ query.view(np.uint64)).sum(axis=1, dtype=np.uint32)
