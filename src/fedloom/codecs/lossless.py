"""Lossless compression of another codec's bytes: ``zstd`` (Zstandard, RFC 8878).

Wire layout: one Zstandard frame holding the inner codec's payload, with the content size in its
header and no checksum (the transport has its own integrity checks). ``wire_size`` is Zstandard's
documented worst case for the inner codec's largest payload, ``ZSTD_COMPRESSBOUND``.

Decoding never trusts the frame: a payload longer than that bound, a frame whose header declares
more bytes than the inner codec can produce, and a frame that would decompress past that maximum
are refused with ``ValueError`` before anything large is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zstandard

from fedloom.codecs.base import (
    BatchCodec,
    Codec,
    Lossless,
    check_int_range,
    check_size,
    parse_int,
    register_stage,
)

DEFAULT_LEVEL = 3
MAX_LEVEL = 22


def compress_bound(size: int) -> int:
    """``ZSTD_COMPRESSBOUND`` (zstd.h): the largest frame ``ZSTD_compress`` writes for ``size``
    bytes of input."""
    margin = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + margin


class Zstd(Lossless):
    """The stage ``zstd`` or ``zstd:LEVEL`` (1 to 22; 3, zstd's default, when not given)."""

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self.level = check_int_range("zstd", "level", level, 1, MAX_LEVEL)
        self.name = "zstd" if self.level == DEFAULT_LEVEL else f"zstd:{self.level}"

    def wrap(self, inner: Codec) -> Codec:
        return ZstdCodec(inner, self.level)


class ZstdCodec(BatchCodec):
    """``inner``'s payload compressed with Zstandard at ``level``."""

    def __init__(self, inner: Codec, level: int = DEFAULT_LEVEL) -> None:
        self.inner = inner
        self.level = level
        self.stochastic = inner.stochastic
        stage = Zstd(level).name
        self.name = stage if inner.name == "float32" else f"{inner.name}|{stage}"

    def wire_size(self, size: int) -> int:
        return compress_bound(self.inner.wire_size(check_size(size)))

    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        payloads = self.inner.encode_rows(rows, rngs if self.stochastic else None)
        # A compressor per call: zstandard's contexts must not be shared between threads, and a
        # cached codec is.
        compressor = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        return [compressor.compress(p) for p in payloads]

    def decode(self, data: bytes, size: int) -> np.ndarray:
        limit = self.inner.wire_size(check_size(size))
        if len(data) > compress_bound(limit):
            raise ValueError(
                f"{self.name} payload has {len(data)} bytes, more than the "
                f"{compress_bound(limit)} it can take for {size} values"
            )
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise ValueError(f"{self.name} payload is not a zstd frame: {exc}") from None
        if declared > limit:
            raise ValueError(
                f"zstd frame declares {declared} bytes, more than the {limit} that "
                f"{self.inner.name} can produce for {size} values"
            )
        try:
            # max_output_size bounds a frame that does not declare its size (0 means unbounded).
            raw = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=max(limit, 1), allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise ValueError(f"zstd frame does not decompress: {exc}") from None
        if len(raw) > limit:
            raise ValueError(
                f"zstd frame decompresses to {len(raw)} bytes, more than the {limit} that "
                f"{self.inner.name} can produce for {size} values"
            )
        return self.inner.decode(raw, size)


def zstd(level: int = DEFAULT_LEVEL) -> Lossless:
    return Zstd(level)


register_stage(
    "zstd",
    lambda arg: zstd(DEFAULT_LEVEL if arg is None else parse_int("zstd", "level", arg)),
)
