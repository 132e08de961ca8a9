"""Floating-point value codecs: ``float32`` (lossless), ``float16`` and ``bfloat16``.

Wire layout: each value as one little-endian float of the codec's width, nothing else
(``size * 4`` or ``size * 2`` bytes). Rounding is to nearest, ties to even. A value beyond the
narrow format's range becomes infinite rather than clipped, so the server's finiteness check
refuses the update instead of aggregating a silently altered one (float16 overflows above 65504;
bfloat16 keeps float32's range, with 8 bits of precision: Kalamkar et al. 2019, "A Study of
BFLOAT16 for Deep Learning Training").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.codecs.base import ValueCodec, check_length, check_size, no_argument, register_stage


class DtypeCodec(ValueCodec):
    """Each value as one little-endian value of ``dtype``; decoding returns float32."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)

    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        with np.errstate(over="ignore"):
            cast = rows.astype(self.dtype, copy=False)
        return [row.tobytes() for row in cast]

    def wire_size(self, size: int) -> int:
        return self.dtype.itemsize * check_size(size)

    def decode(self, data: bytes, size: int) -> np.ndarray:
        check_length(self.name, data, size, self.wire_size(size))
        return np.frombuffer(data, dtype=self.dtype).astype(np.float32)


class Float32Codec(DtypeCodec):
    """Lossless float32: 4 bytes per value."""

    def __init__(self) -> None:
        super().__init__("float32", "<f4")


class Float16Codec(DtypeCodec):
    """IEEE half precision: 2 bytes per value, relative error at most 2**-11 within its range."""

    def __init__(self) -> None:
        super().__init__("float16", "<f2")


class BFloat16Codec(ValueCodec):
    """bfloat16: the upper 16 bits of the float32, rounded to nearest even; 2 bytes per value,
    relative error at most 2**-8."""

    name = "bfloat16"

    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        bits = rows.view(np.uint32)
        # Round to nearest even on the 16 dropped bits. Only NaNs can carry past the top bit
        # (wrapping around), and they are set to the canonical quiet NaN below.
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> 16
        halves = rounded.astype("<u2")
        halves[np.isnan(rows)] = 0x7FC0
        return [row.tobytes() for row in halves]

    def wire_size(self, size: int) -> int:
        return 2 * check_size(size)

    def decode(self, data: bytes, size: int) -> np.ndarray:
        check_length(self.name, data, size, self.wire_size(size))
        halves = np.frombuffer(data, dtype="<u2").astype(np.uint32)
        out: np.ndarray = (halves << np.uint32(16)).view(np.float32)
        return out


def float32() -> ValueCodec:
    return Float32Codec()


def float16() -> ValueCodec:
    return Float16Codec()


def bfloat16() -> ValueCodec:
    return BFloat16Codec()


register_stage("float32", no_argument("float32", float32))
register_stage("float16", no_argument("float16", float16))
register_stage("bfloat16", no_argument("bfloat16", bfloat16))
