"""Sparsification: send ``k = fraction * size`` entries of each update (``topk``, ``randomk``).

- ``topk:F`` keeps the ``k`` entries of largest magnitude (Aji and Heafield 2017, "Sparse
  Communication for Distributed Gradient Descent"; Lin et al. 2018, "Deep Gradient Compression").
  Ties are broken by the lower index, so the choice is deterministic; NaN counts as the largest
  magnitude, so a non-finite update is sent (and refused by the server) rather than hidden. It is
  biased: pair it with error feedback (Stich et al. 2018, "Sparsified SGD with Memory").
- ``randomk:F`` keeps ``k`` indices drawn uniformly without replacement and the decoder scales
  the kept values by ``size / k``. Each entry is kept with probability ``k / size``, so the decoded
  vector equals the input in expectation (Stich et al. 2018; Wangni et al. 2018).

``k`` is ``F * size`` rounded half up, at least 1 for a non-empty vector; the decoder derives it
from the size, so it is not sent. The kept values go through the chain's value codec (float32 by
default) as a vector of ``k`` values. Wire layout::

    tag: u8  |  index section  |  the value codec's encoding of the k kept values (fixed width)

    tag 0: delta varints. The k gaps ``i_0, i_1 - i_0 - 1, ...`` as LEB128 varints (7 bits a byte).
    tag 1: bitmap. ceil(size / 8) bytes, bit i (bit i % 8 of byte i // 8) set for kept index i.

The encoder writes whichever index section is shorter for the indices at hand (the varints on a
tie). At 1% of 100,000 values the gaps average 99, most of them one varint byte: about 1.3 bytes
an index against 12.5 for the bitmap, which wins above roughly 1/8 density.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.codecs._bits import decode_varints, encode_varints, max_varint_length, varint_lengths
from fedloom.codecs.base import (
    BatchCodec,
    Sparsifier,
    ValueCodec,
    check_fraction,
    check_size,
    format_number,
    parse_float,
    register_stage,
    require_argument,
)

VARINTS = 0
BITMAP = 1


class TopK(Sparsifier):
    """Keep the ``fraction * size`` entries of largest magnitude (ties: the lower index)."""

    stochastic = False

    def __init__(self, fraction: float) -> None:
        self.fraction = check_fraction("topk", fraction)
        self.name = f"topk:{format_number(self.fraction)}"

    def select(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        count, size = rows.shape
        k = self.count(size)
        if k == size:
            return np.tile(np.arange(size), (count, 1))
        magnitude = np.abs(rows)
        magnitude[np.isnan(magnitude)] = np.inf
        # The k-th largest magnitude of every row at once; everything above it is kept, and as
        # many entries equal to it as are still missing, lowest index first.
        kth = np.partition(magnitude, size - k, axis=1)[:, size - k, None]
        keep = magnitude > kth
        missing = k - keep.sum(axis=1)
        ties = magnitude == kth
        for row in np.flatnonzero(ties.sum(axis=1) > missing):
            ties[row, np.flatnonzero(ties[row])[missing[row] :]] = False
        keep |= ties
        indices: np.ndarray = np.nonzero(keep)[1].reshape(count, k)
        return indices


class RandomK(Sparsifier):
    """Keep ``fraction * size`` uniformly random entries, scaled by ``size / k`` (unbiased)."""

    stochastic = True

    def __init__(self, fraction: float) -> None:
        self.fraction = check_fraction("randomk", fraction)
        self.name = f"randomk:{format_number(self.fraction)}"

    def select(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        size = rows.shape[1]
        k = self.count(size)
        # Each client's draw comes from its own stream; sorting is one batched call.
        drawn = np.stack([rng.choice(size, size=k, replace=False) for rng in rngs])
        return np.sort(drawn, axis=1)

    def decode_scale(self, size: int) -> float:
        k = self.count(size)
        return size / k if k else 1.0


class SparseCodec(BatchCodec):
    """A sparsifier followed by a value codec applied to the kept values only."""

    def __init__(self, sparsifier: Sparsifier, values: ValueCodec) -> None:
        self.sparsifier = sparsifier
        self.values = values
        self.stochastic = sparsifier.stochastic or values.stochastic
        self.name = (
            sparsifier.name if values.name == "float32" else f"{sparsifier.name}|{values.name}"
        )

    def wire_size(self, size: int) -> int:
        size = check_size(size)
        k = self.sparsifier.count(size)
        return 1 + index_section_bound(k, size) + self.values.wire_size(k)

    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        size = rows.shape[1]
        indices = self.sparsifier.select(rows, rngs if self.sparsifier.stochastic else ())
        kept = np.take_along_axis(rows, indices, axis=1)
        values = self.values.encode_rows(kept, rngs if self.values.stochastic else None)
        return [i + v for i, v in zip(encode_index_rows(indices, size), values, strict=True)]

    def decode(self, data: bytes, size: int) -> np.ndarray:
        size = check_size(size)
        k = self.sparsifier.count(size)
        value_bytes = self.values.wire_size(k)
        most = self.wire_size(size)
        if not 1 + value_bytes <= len(data) <= most:
            raise ValueError(
                f"{self.name} payload has {len(data)} bytes; for {size} values it takes "
                f"{1 + value_bytes} to {most}"
            )
        split = len(data) - value_bytes
        indices = decode_indices(data[:split], k, size)
        values = self.values.decode(data[split:], k)
        scale = self.sparsifier.decode_scale(size)
        out = np.zeros(size, np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            out[indices] = values if scale == 1.0 else values * np.float32(scale)
        return out


def index_section_bound(k: int, size: int) -> int:
    """The most bytes the index section of ``k`` of ``size`` indices takes: the bitmap, or the
    longest the varints can be, whichever is smaller.

    The ``k`` gaps are non-negative and sum to at most ``size - k``, so at most
    ``(size - k) // 128**j`` of them reach ``128**j`` and need a ``(j + 1)``-th byte.
    """
    total = size - k
    varints = k
    threshold = 128
    while k and threshold <= total:
        varints += min(k, total // threshold)
        threshold *= 128
    return min(-(-size // 8), varints)


def encode_index_rows(indices: np.ndarray, size: int) -> list[bytes]:
    """The tag and index section of each row of ``indices`` (increasing, into ``size`` values),
    computed for all rows at once."""
    gaps = (np.diff(indices, axis=1, prepend=-1) - 1).astype(np.uint64)
    lengths = varint_lengths(gaps)
    varint_bytes = lengths.sum(axis=1)
    as_varints = varint_bytes <= -(-size // 8)
    varints = encode_varints(gaps[as_varints].ravel(), lengths[as_varints].ravel())
    varint_ends = iter(np.cumsum(varint_bytes[as_varints]).tolist())
    as_bitmap = indices[~as_varints]
    mask = np.zeros((len(as_bitmap), size), bool)
    np.put_along_axis(mask, as_bitmap, True, axis=1)
    bitmaps = iter(np.packbits(mask, axis=1, bitorder="little"))
    out = []
    start = 0
    for varint in as_varints.tolist():
        if varint:
            end = next(varint_ends)
            out.append(bytes([VARINTS]) + varints[start:end].tobytes())
            start = end
        else:
            out.append(bytes([BITMAP]) + next(bitmaps).tobytes())
    return out


def decode_indices(section: bytes, k: int, size: int) -> np.ndarray:
    """The ``k`` increasing indices an index section names; ``ValueError`` if it names anything
    else (a bad tag, a wrong count, an index out of range, stray bytes)."""
    tag = section[0]
    body = np.frombuffer(section, dtype=np.uint8, offset=1)
    if tag == BITMAP:
        if len(body) != -(-size // 8):
            raise ValueError(
                f"bitmap of {len(body)} bytes for {size} values, expected {-(-size // 8)}"
            )
        bits = np.unpackbits(body, bitorder="little")
        if bits[size:].any():
            raise ValueError(f"bitmap marks indices past the last of {size} values")
        indices = np.flatnonzero(bits)
        if len(indices) != k:
            raise ValueError(f"bitmap marks {len(indices)} indices, expected {k} of {size}")
        return indices
    if tag == VARINTS:
        gaps = decode_varints(body, k, max_varint_length(max(size - 1, 0)))
        if k and int(gaps.max()) >= size:
            raise ValueError(f"an index gap of {int(gaps.max())} runs past {size} values")
        indices = np.cumsum(gaps.astype(np.int64) + 1) - 1
        if k and indices[-1] >= size:
            raise ValueError(f"index {indices[-1]} is out of range for {size} values")
        return indices
    raise ValueError(f"unknown index format tag {tag}: expected {VARINTS} (varints) or {BITMAP}")


def topk(fraction: float) -> Sparsifier:
    return TopK(fraction)


def randomk(fraction: float) -> Sparsifier:
    return RandomK(fraction)


def _fraction(name: str, arg: str | None) -> float:
    return parse_float(name, "fraction", require_argument(name, arg, f"{name}:0.01"))


register_stage("topk", lambda arg: topk(_fraction("topk", arg)))
register_stage("randomk", lambda arg: randomk(_fraction("randomk", arg)))
