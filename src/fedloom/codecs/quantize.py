"""Uniform symmetric quantisation with a scale per block: ``int8`` and ``int4``.

The vector is cut into blocks of ``BLOCK`` (256) consecutive values, the last one possibly shorter.
Each block has one float32 scale, ``max|v| / qmax`` with ``qmax = 2**(bits-1) - 1`` (127 for int8,
7 for int4), and each value becomes ``q = round(v / scale)``, an integer in ``[-qmax, qmax]``
(round to nearest, ties to even); decoding gives ``q * scale``. The error of a value is at most
``scale / 2 = max|block| / (2 qmax)``. One scale per block rather than per tensor keeps one large
entry from flattening the precision of the whole update (Dettmers et al. 2022, "8-bit Optimizers
via Block-wise Quantization", use blocks of 2048; QLoRA's NF4 uses 64).

Wire layout, ``nb = ceil(size / 256)`` blocks::

    nb x float32 scale (little-endian)  |  size x int8            (int8: 4 nb + size bytes)
    nb x float32 scale (little-endian)  |  ceil(size / 2) bytes   (int4)

int4 packs two values a byte, value ``2i`` in the low nibble of byte ``i`` and value ``2i + 1`` in
the high one, each in two's complement; the high nibble after an odd last value is zero.

A block holding a NaN or an infinity gets a non-finite scale, so it decodes to non-finite values
and the server refuses the update rather than aggregating a silently altered one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.codecs.base import ValueCodec, check_length, check_size, no_argument, register_stage

BLOCK = 256


def block_count(size: int) -> int:
    return -(-size // BLOCK)


class BlockQuantCodec(ValueCodec):
    """Symmetric ``bits``-bit quantisation with one float32 scale per block of ``BLOCK`` values."""

    def __init__(self, bits: int) -> None:
        if bits not in (4, 8):
            raise ValueError(f"block quantisation takes 4 or 8 bits, got {bits}")
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        self.name = f"int{bits}"

    def wire_size(self, size: int) -> int:
        size = check_size(size)
        return 4 * block_count(size) + (size if self.bits == 8 else -(-size // 2))

    def _encode_rows(self, rows: np.ndarray, rngs: Sequence[np.random.Generator]) -> list[bytes]:
        size = rows.shape[1]
        scales = _block_maxima(rows) / np.float32(self.qmax)
        per_value = np.repeat(scales, BLOCK, axis=1)[:, :size]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.rint(rows / per_value)
        q[~np.isfinite(q)] = 0  # all-zero blocks (0/0) and non-finite ones (their scale says so)
        np.clip(q, -self.qmax, self.qmax, out=q)
        ints = q.astype(np.int8)
        packed = ints.view(np.uint8) if self.bits == 8 else _pack_nibbles(ints)
        scale_bytes = scales.astype("<f4")
        return [s.tobytes() + p.tobytes() for s, p in zip(scale_bytes, packed, strict=True)]

    def decode(self, data: bytes, size: int) -> np.ndarray:
        check_length(self.name, data, size, self.wire_size(size))
        blocks = block_count(size)
        scales = np.frombuffer(data, dtype="<f4", count=blocks)
        body = np.frombuffer(data, dtype=np.uint8, offset=4 * blocks)
        ints = body.view(np.int8) if self.bits == 8 else _unpack_nibbles(body, size)
        with np.errstate(invalid="ignore", over="ignore"):
            out: np.ndarray = ints.astype(np.float32) * np.repeat(scales, BLOCK)[:size]
        return out


def _block_maxima(rows: np.ndarray) -> np.ndarray:
    """``max|v|`` of each block of each row: a ``(rows, blocks)`` float32 matrix (NaN if the
    block holds one)."""
    count, size = rows.shape
    magnitude = np.abs(rows)
    whole = size // BLOCK * BLOCK
    out = np.empty((count, block_count(size)), np.float32)
    out[:, : whole // BLOCK] = magnitude[:, :whole].reshape(count, -1, BLOCK).max(axis=2)
    if whole < size:
        out[:, -1] = magnitude[:, whole:].max(axis=1)
    return out


def _pack_nibbles(ints: np.ndarray) -> np.ndarray:
    nibbles = (ints & 0x0F).astype(np.uint8)
    if nibbles.shape[1] % 2:
        nibbles = np.pad(nibbles, ((0, 0), (0, 1)))
    packed: np.ndarray = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return packed


def _unpack_nibbles(body: np.ndarray, size: int) -> np.ndarray:
    if size % 2 and body[-1] >> 4:
        raise ValueError("int4 payload: the padding nibble after the last value is not zero")
    nibbles = np.empty(2 * len(body), np.uint8)
    nibbles[0::2] = body & 0x0F
    nibbles[1::2] = body >> 4
    # Two's complement: nibbles 8..15 are -8..-1.
    return (nibbles[:size].astype(np.int8) ^ 8) - 8


def int8() -> ValueCodec:
    return BlockQuantCodec(8)


def int4() -> ValueCodec:
    return BlockQuantCodec(4)


register_stage("int8", no_argument("int8", int8))
register_stage("int4", no_argument("int4", int4))
