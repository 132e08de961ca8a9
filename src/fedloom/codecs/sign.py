"""Scaled sign compression: one bit a value and one scale a vector.

signSGD (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex Problems") sends
``sign(v)``; scaling it by ``mean|v| = ||v||_1 / size`` gives the update its magnitude back and is
the compressor that error feedback makes converge (Karimireddy et al. 2019, "Error Feedback Fixes
SignSGD and other Gradient Compression Schemes"). Decoding gives ``+scale`` where ``v_i >= 0``
(zero included) and ``-scale`` where ``v_i < 0``. It is biased: pair it with error feedback.

Wire layout::

    scale: float32 (little-endian)  |  ceil(size / 8) bytes, bit i set where v_i < 0
                                       (bit i is bit i % 8 of byte i // 8; padding bits zero)

A NaN or infinite entry makes the scale non-finite, so the vector decodes to non-finite values and
the server refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.codecs.base import (
    ValueCodec,
    check_length,
    check_size,
    no_argument,
    register_stage,
    row_sums,
)


class SignCodec(ValueCodec):
    """``mean|v| * sign(v)``: 1 bit a value plus a float32 scale."""

    name = "sign"

    def wire_size(self, size: int) -> int:
        return 4 + -(-check_size(size) // 8)

    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        size = rows.shape[1]
        with np.errstate(over="ignore"):
            scales = (row_sums(rows) / max(size, 1)).astype("<f4")
        bits = np.packbits(rows < 0, axis=1, bitorder="little")
        return [s.tobytes() + b.tobytes() for s, b in zip(scales[:, None], bits, strict=True)]

    def decode(self, data: bytes, size: int) -> np.ndarray:
        check_length(self.name, data, size, self.wire_size(size))
        scale = np.frombuffer(data, dtype="<f4", count=1)[0]
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=4), bitorder="little")
        if bits[size:].any():
            raise ValueError("sign payload: padding bits after the last value are not zero")
        out = np.full(size, scale, np.float32)
        np.negative(out, out=out, where=bits[:size].astype(bool))
        return out


def sign() -> ValueCodec:
    return SignCodec()


register_stage("sign", no_argument("sign", sign))
