"""Quantised search: every vector kept in memory only as compact codes (int8: a quarter of float32; binary: one bit
a value, a thirty-second), scanned for each query; the best candidates are then scored again exactly on the float32
vectors, kept in a file and read row by row (the rescoring store costs the process no memory: the operating
system caches it, like a database's pages).

int8 uses ``Codes`` (a scale per vector and a bound on what rounding lost): only the candidates whose bound reaches
the n-th best are rescored, so the answer is the exact one. Binary keeps the sign of each value and its vector's mean
magnitude: the codes nearest the query's signs by Hamming distance (a popcount a 64-bit word) are scored against the
query's values (each byte of a code by a table of 256 partial sums), and the ``RESCORE`` x n best of those rescored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

from superduper.base.exceptions import InvalidValue
from superduper.base.keys import dump_key, load_key
from superduper.vector_search.exact import ExactSearcher, scored
from superduper.vector_search.hnsw import Codes, _grown
from superduper.vector_search.signs import hamming, pack_signs, width

QUANTIZATIONS = ('int8', 'binary')
SCAN_CHUNK = 16_384  # codes decoded at a time during a scan (bounds the scan's temporary memory)
RESCORE = 40  # binary: candidates rescored exactly per result asked for
RESCORE_MIN = 400
SHORTLIST = 400  # binary: candidates kept by Hamming distance per result asked for, scored against the query
SHORTLIST_MIN = 4000
#: each byte value's eight bits as +-1 (numpy packs the first value into the highest bit)
SIGNS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2 - 1


class FileVectors:
    """float32 vectors at fixed positions in an unlinked temporary file, read back a row at a time: the rescoring
    store."""

    def __init__(self, dim: int):
        self.dim, self.rows = dim, 0
        fd, path = tempfile.mkstemp(prefix='superduper-vectors-', suffix='.f32')
        os.unlink(path)  # gone with the process
        self.file = os.fdopen(fd, 'r+b')

    def put(self, positions: np.ndarray, vectors: np.ndarray) -> None:
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        row = self.dim * 4
        fd = self.file.fileno()
        if len(positions) and np.all(np.diff(positions) == 1):  # a run (the usual append): one write
            os.pwrite(fd, data.tobytes(), int(positions[0]) * row)
        else:
            for pos, vector in zip(positions.tolist(), data):
                os.pwrite(fd, vector.tobytes(), pos * row)
        if len(positions):
            self.rows = max(self.rows, int(positions.max()) + 1)

    def get(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions``, read one by one (a mapping would bring in whole folios around each)."""
        row = self.dim * 4
        fd = self.file.fileno()
        data = b''.join(os.pread(fd, row, pos * row) for pos in np.asarray(positions).tolist())
        out = np.frombuffer(data, dtype=np.float32)
        if len(out) != len(positions) * self.dim:
            raise InvalidValue(f'rescoring store holds {self.rows} vectors; asked for one beyond')
        return out.reshape(len(positions), self.dim)

    def save(self, path: str, size: int) -> None:
        self.file.seek(0)
        with open(path, 'wb') as out:
            _copy(self.file, out, size * self.dim * 4)

    def load(self, path: str, size: int) -> None:
        if os.path.getsize(path) != size * self.dim * 4:
            raise InvalidValue(f'saved index file {path} holds {os.path.getsize(path)} bytes, not {size} vectors')
        with open(path, 'rb') as f:
            self.file.seek(0)
            _copy(f, self.file, size * self.dim * 4)
            self.file.flush()
        self.rows = size


def _copy(source: Any, target: Any, length: int) -> None:
    shutil.copyfileobj(_Limited(source, length), target, 1 << 20)


class _Limited:
    def __init__(self, f: Any, length: int):
        self.f, self.left = f, length

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


class Bits:
    """Each vector as the signs of its values (packed bits) times its mean magnitude, with its norm."""

    def __init__(self, dim: int):
        self.dim, self.width = dim, width(dim)
        self.codes = np.zeros((0, self.width), dtype=np.uint8)
        self.scale = np.zeros(0, dtype=np.float32)
        self.norm = np.zeros(0, dtype=np.float32)

    def put(self, positions: np.ndarray, vectors: np.ndarray, size: int) -> None:
        if size > len(self.codes):
            capacity = max(size, int(len(self.codes) * 1.5) + 1024)
            self.codes = _grown(self.codes, (capacity, self.width))
            self.scale, self.norm = (_grown(a, (capacity,)) for a in (self.scale, self.norm))
        vectors = np.asarray(vectors, dtype=np.float32)
        self.codes[positions] = pack_signs(vectors, self.dim)
        self.scale[positions] = np.abs(vectors).mean(axis=1)
        self.norm[positions] = np.linalg.norm(vectors, axis=1)

    def scores(self, q: np.ndarray, positions: np.ndarray, measure: str) -> np.ndarray:
        padded = np.zeros(self.width * 8, dtype=np.float32)
        padded[: self.dim] = q
        table = padded.reshape(self.width, 8) @ SIGNS.T  # (byte, value) -> that byte's partial sum
        columns = np.arange(self.width)
        dots = table[columns, self.codes[positions]].sum(axis=1) * self.scale[positions]
        if measure == 'l2':
            return -(self.norm[positions] ** 2 - 2 * dots + float(q @ q))
        return dots

    def hamming(self, q: np.ndarray, positions: Any) -> np.ndarray:
        """How many signs of each vector differ from the query's (a first, coarser cut)."""
        return hamming(self.codes[positions], q)

    def save(self, folder: str, size: int) -> None:
        for name in ('codes', 'scale', 'norm'):
            np.save(os.path.join(folder, f'bits_{name}.npy'), getattr(self, name)[:size])

    def load(self, folder: str, size: int) -> bool:
        self.codes, self.scale, self.norm = (np.load(os.path.join(folder, f'bits_{name}.npy'))
                                             for name in ('codes', 'scale', 'norm'))
        return len(self.codes) == size


class QuantizedSearcher(ExactSearcher):
    """Exact-or-near search over quantised codes, the top candidates rescored on the float32 vectors."""

    def __init__(self, dim: int, measure: str = 'cosine', quantization: str = 'int8'):
        if quantization not in QUANTIZATIONS:
            raise InvalidValue(f'quantization {quantization!r}; expected one of {", ".join(QUANTIZATIONS)}')
        super().__init__(dim, measure)
        self.kind = quantization
        self.codes: Codes | Bits = Codes(dim) if quantization == 'int8' else Bits(dim)
        self.store = FileVectors(dim)
        self.matrix = np.zeros((0, dim), dtype=np.float32)  # unused: the vectors are in ``store``

    def _store(self, positions: np.ndarray, matrix: np.ndarray) -> None:
        self.codes.put(positions, matrix, len(self.ids))
        self.store.put(positions, matrix)

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        return self.store.get(positions)

    def scores(self, query: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        rows = self.vectors(np.arange(len(self.ids), dtype=np.int64) if positions is None else positions)
        return scored(rows, query, self.measure)

    def search(self, query: Any, n: int, candidates: Sequence[Any] | None = None,
               beam: int | None = None) -> list[tuple[Any, float]]:
        return self._nearest_of(self.prepare(query)[0], n, self.alive_positions(candidates))

    def _nearest_of(self, q: np.ndarray, n: int, positions: np.ndarray) -> list[tuple[Any, float]]:
        if n <= 0 or not len(positions):
            return []
        close = self._candidates(q, n, positions)
        exact = self.scores(q, close)
        top = np.argsort(-exact, kind='stable')[:n]
        return [(self.ids[p], float(s)) for p, s in zip(close[top].tolist(), exact[top].tolist())]

    def _candidates(self, q: np.ndarray, n: int, positions: np.ndarray) -> np.ndarray:
        """The positions to rescore: int8, those whose error bound reaches the n-th best (the exact answer is among
        them); binary, the best by the codes."""
        if not isinstance(self.codes, Codes):
            return self._binary_candidates(q, n, positions)
        whole = len(positions) == len(self.ids)  # every position alive: scanned by slices, not copied
        end = len(positions)
        parts = [self.codes.scan(q, slice(i, min(i + SCAN_CHUNK, end)) if whole else positions[i : i + SCAN_CHUNK],
                                 self.measure)
                 for i in range(0, end, SCAN_CHUNK)]
        approx = np.concatenate([a for a, _ in parts])
        error = np.concatenate([e for _, e in parts])
        low = approx - error
        floor = np.partition(low, len(low) - n)[len(low) - n] if n < len(low) else -np.inf
        return positions[approx + error >= floor]

    def _binary_candidates(self, q: np.ndarray, n: int, positions: np.ndarray) -> np.ndarray:
        """The ``SHORTLIST`` x n nearest by Hamming distance to the query's signs, of those the ``RESCORE`` x n
        best scored against the query's values."""
        bits: Bits = self.codes  # type: ignore[assignment]
        k = max(RESCORE * n, RESCORE_MIN)
        if k >= len(positions):
            return positions
        short = max(SHORTLIST * n, SHORTLIST_MIN)
        if short < len(positions):
            whole = len(positions) == len(self.ids)
            end = len(positions)
            distance = np.concatenate([
                bits.hamming(q, slice(i, min(i + SCAN_CHUNK, end)) if whole else positions[i : i + SCAN_CHUNK])
                for i in range(0, end, SCAN_CHUNK)])
            positions = positions[np.argpartition(distance, short - 1)[:short]]
        approx = bits.scores(q, positions, self.measure)
        return positions[np.argpartition(-approx, k - 1)[:k]]

    # ---- persistence ------------------------------------------------------------------------------------------
    def save(self, folder: str) -> None:
        size = len(self.ids)
        with open(os.path.join(folder, 'ids.json'), 'w') as f:
            f.write(dump_key(list(self.ids)))
        np.save(os.path.join(folder, 'alive.npy'), self.alive[:size])
        self.codes.save(folder, size)
        self.store.save(os.path.join(folder, 'vectors.f32'), size)

    def load(self, folder: str) -> None:
        with open(os.path.join(folder, 'ids.json')) as f:
            self.ids = list(load_key(f.read()) or ())
        self.positions = {id_: i for i, id_ in enumerate(self.ids)}
        self.alive = np.load(os.path.join(folder, 'alive.npy'))
        size = len(self.ids)
        if len(self.alive) != size or not self.codes.load(folder, size):
            raise InvalidValue(f'saved index in {folder} is inconsistent: {size} ids')
        self.store.load(os.path.join(folder, 'vectors.f32'), size)
        self._count = int(self.alive.sum())
        self.version += 1
