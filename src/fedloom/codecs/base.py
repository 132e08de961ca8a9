"""The codec interface, the three kinds of chain stage, and the registry of stage names.

A codec turns a flat float32 update into the bytes that travel, and back. A chain has at most one
stage of each kind, in this order (``chain.py`` composes them)::

    sparsifier (topk, randomk)  ->  value codec (float32, float16, ..., sign)  ->  lossless (zstd)

A sparsifier picks the entries to send, a value codec writes numbers in a fixed number of bytes,
and a lossless stage compresses the bytes of everything before it.

Every codec is written once, for a batch of rows (one per client): ``encode_rows`` runs each step
(a top-k, the scales, the rounding) as one numpy call over a block of rows, and ``encode`` is
``encode_rows`` of a single row, so the per-client and the batched paths are the same code and
give the same bytes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol, TypeAlias

import numpy as np


class Codec(Protocol):
    """Encode a flat float32 vector to bytes and decode it back.

    ``wire_size(size)`` is the most bytes ``encode`` can produce for ``size`` values (exact for
    fixed-width codecs); uploads longer than that are refused before they are read. ``decode``
    raises ``ValueError`` for a payload this codec cannot have produced for ``size`` values.
    Stochastic codecs (QSGD, random-k) draw from the ``rng`` they are given, one per row in
    ``encode_rows``; ``encode_rows(rows, rngs)`` equals ``[encode(r, g) for r, g in ...]``.
    """

    name: str
    stochastic: bool

    def encode(self, vec: np.ndarray, rng: np.random.Generator | None = None) -> bytes: ...

    def decode(self, data: bytes, size: int) -> np.ndarray: ...

    def wire_size(self, size: int) -> int: ...

    def encode_rows(
        self, rows: np.ndarray, rngs: Sequence[np.random.Generator] | None = None
    ) -> list[bytes]: ...


class BatchCodec(ABC):
    """A codec written once for a batch of rows: subclasses implement ``_encode_rows`` over a
    float32 ``(clients, size)`` matrix, ``decode`` and ``wire_size``."""

    name: str
    stochastic: bool = False

    def encode(self, vec: np.ndarray, rng: np.random.Generator | None = None) -> bytes:
        return self.encode_rows(as_vector(vec)[None, :], None if rng is None else [rng])[0]

    def encode_rows(
        self, rows: np.ndarray, rngs: Sequence[np.random.Generator] | None = None
    ) -> list[bytes]:
        matrix = as_rows(rows)
        streams: Sequence[np.random.Generator] = ()
        if self.stochastic:
            streams = check_rngs(self.name, rngs, len(matrix))
        # Each vectorised step runs over a block of at most BATCH_VALUES values, so that its
        # temporaries stay in cache: a block holds hundreds of clients of a small model, and one
        # client of a large model, where the per-call overhead no longer counts. Measured on a CPU:
        # int8 of 20 x 1M values takes 67 ms in blocks and 250 ms as one (20, 1M) pass; top-k of
        # 1000 x 2000 values 15 ms in blocks and 106 ms client by client.
        step = max(1, BATCH_VALUES // max(matrix.shape[1], 1))
        out: list[bytes] = []
        for start in range(0, len(matrix), step):
            rows_rngs = streams[start : start + step] if self.stochastic else ()
            out += self._encode_rows(matrix[start : start + step], rows_rngs)
        return out

    @abstractmethod
    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        """One payload per row of a C-contiguous float32 matrix; ``rngs`` holds one generator per
        row for stochastic codecs and is empty otherwise."""

    @abstractmethod
    def decode(self, data: bytes, size: int) -> np.ndarray: ...

    @abstractmethod
    def wire_size(self, size: int) -> int: ...

    def __repr__(self) -> str:
        return f"<codec {self.name}>"


class ValueCodec(BatchCodec):
    """The value stage of a chain: a fixed-width codec, ``len(encode(v)) == wire_size(len(v))``."""

    kind: ClassVar[str] = "values"


class Sparsifier(ABC):
    """The first stage of a chain: which entries of each row travel.

    It keeps ``count(size)`` entries per row, so the decoder knows the count from the size alone.
    """

    kind: ClassVar[str] = "sparsifier"
    name: str
    stochastic: bool
    fraction: float

    def count(self, size: int) -> int:
        """``fraction * size`` rounded half up, at least one entry of a non-empty vector."""
        if size == 0:
            return 0
        return min(size, max(1, math.floor(self.fraction * size + 0.5)))

    @abstractmethod
    def select(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """The kept indices of each row: an int64 ``(clients, count)`` matrix, increasing along
        each row."""

    def decode_scale(self, size: int) -> float:
        """What the decoder multiplies the kept values by (an unbiased sparsifier's ``size / k``)."""
        return 1.0


class Lossless(ABC):
    """The last stage of a chain: compresses the bytes of the codec before it."""

    kind: ClassVar[str] = "lossless"
    name: str

    @abstractmethod
    def wrap(self, inner: Codec) -> Codec:
        """``inner`` followed by this stage."""


Stage: TypeAlias = Sparsifier | ValueCodec | Lossless
StageBuilder: TypeAlias = Callable[[str | None], Stage]

STAGES: dict[str, StageBuilder] = {}
"""Stage builders by name: ``STAGES["topk"]("0.01")`` is the stage ``topk:0.01`` of a spec."""


def register_stage(name: str, build: StageBuilder) -> None:
    """Make ``name`` (with the argument text after ``name:``, or None) usable in a codec spec."""
    if not name.isidentifier():
        raise ValueError(f"a codec stage name is an identifier, got {name!r}")
    STAGES[name] = build


def no_argument(name: str, make: Callable[[], Stage]) -> StageBuilder:
    """A builder for a stage that takes no argument (``int8``, ``sign``)."""

    def build(arg: str | None) -> Stage:
        if arg is not None:
            raise ValueError(f"{name} takes no argument, got {name}:{arg}")
        return make()

    return build


def require_argument(name: str, arg: str | None, example: str) -> str:
    """The argument text of ``name:arg``; a ``ValueError`` with an example if there is none."""
    if not arg:
        raise ValueError(f"{name} needs an argument, e.g. {example!r}")
    return arg


def parse_float(name: str, what: str, arg: str) -> float:
    try:
        return float(arg)
    except ValueError:
        raise ValueError(f"{name} {what} must be a number, got {arg!r}") from None


def parse_int(name: str, what: str, arg: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"{name} {what} must be an integer, got {arg!r}") from None


def check_fraction(name: str, fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} fraction must be in (0, 1], got {fraction}")
    return float(fraction)


def check_int_range(name: str, what: str, value: int, low: int, high: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        raise ValueError(f"{name} {what} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def format_number(value: float) -> str:
    """The canonical text of a stage argument: ``0.01``, ``1`` (not ``1.0``), ``1e-05``."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def as_vector(vec: np.ndarray) -> np.ndarray:
    """``vec`` as a C-contiguous float32 vector; ``ValueError`` unless it is flat."""
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise ValueError(f"encode takes a flat vector, got shape {arr.shape}; use encode_rows")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as it must
        return np.ascontiguousarray(arr, dtype=np.float32)


def as_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` as a C-contiguous float32 ``(clients, size)`` matrix."""
    arr = np.asarray(rows)
    if arr.ndim != 2:
        raise ValueError(f"encode_rows takes a (clients, size) matrix, got shape {arr.shape}")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(arr, dtype=np.float32)


def check_rngs(
    name: str, rngs: Sequence[np.random.Generator] | None, count: int
) -> Sequence[np.random.Generator]:
    if rngs is None:
        raise ValueError(
            f"{name} is stochastic: pass an np.random.Generator to encode (one per row to "
            "encode_rows), so that uploads are reproducible"
        )
    if len(rngs) != count:
        raise ValueError(f"{name}: {len(rngs)} generators for {count} rows; pass one per row")
    return rngs


def check_size(size: int) -> int:
    if size < 0:
        raise ValueError(f"a vector size is a count of values, got {size}")
    return int(size)


def check_length(name: str, data: bytes, size: int, expected: int) -> None:
    """``ValueError`` unless a fixed-width payload has exactly ``expected`` bytes."""
    if len(data) != expected:
        raise ValueError(f"payload has {len(data)} bytes, expected {expected} ({name} x {size})")


def row_sums(values: np.ndarray, square: bool = False) -> np.ndarray:
    """Per-row sums of ``|values|`` (or of squares) in float64, as one vectorised reduction.

    A reduction along the contiguous last axis sums each row with the same pairwise order whatever
    the number of rows, so a row's sum here equals its sum alone (encode == encode_rows, exactly).
    Rows go through in chunks to keep the float64 copy small.
    """
    out = np.empty(len(values), np.float64)
    step = max(1, _CHUNK_VALUES // max(values.shape[1], 1))
    for start in range(0, len(values), step):
        part = values[start : start + step].astype(np.float64)
        if square:
            np.multiply(part, part, out=part)
        else:
            np.abs(part, out=part)
        out[start : start + step] = part.sum(axis=1)
    return out


_CHUNK_VALUES = 1 << 22

BATCH_VALUES = 1 << 18
