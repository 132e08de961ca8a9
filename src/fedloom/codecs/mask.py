"""A 0/1 mask as a bitmap: one bit a value, exact.

The server sends the mask of a pruned model once (Zhu and Gupta 2017, "To prune, or not to prune");
afterwards the model and the updates travel as the values under the mask only. ``bitmask`` is the
codec of that mask blob: it refuses any value other than 0 and 1, so it is never a lossy codec for
an update by mistake.

Wire layout: ``ceil(size / 8)`` bytes, bit ``i`` set where ``v_i == 1`` (bit ``i`` is bit ``i % 8``
of byte ``i // 8``; padding bits zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.codecs.base import ValueCodec, check_length, check_size, no_argument, register_stage


class BitmaskCodec(ValueCodec):
    """0/1 vectors, one bit a value."""

    name = "bitmask"

    def wire_size(self, size: int) -> int:
        return -(-check_size(size) // 8)

    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        ones = rows == 1
        if not (ones | (rows == 0)).all():
            raise ValueError("bitmask encodes 0/1 masks only; this vector holds other values")
        return [b.tobytes() for b in np.packbits(ones, axis=1, bitorder="little")]

    def decode(self, data: bytes, size: int) -> np.ndarray:
        check_length(self.name, data, size, self.wire_size(size))
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        if bits[size:].any():
            raise ValueError("bitmask payload: padding bits after the last value are not zero")
        return bits[:size].astype(np.float32)


def bitmask() -> ValueCodec:
    return BitmaskCodec()


register_stage("bitmask", no_argument("bitmask", bitmask))
