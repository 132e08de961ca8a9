"""Bit packing and LEB128 varints, vectorised with numpy; bits are little-endian throughout
(value ``i`` of width ``w`` occupies bits ``i*w .. i*w+w-1``, bit 0 being the lowest of byte 0)."""

from __future__ import annotations

import numpy as np

_CHUNK_VALUES = 1 << 22


def packed_length(count: int, width: int) -> int:
    return -(-count * width // 8)


def pack_bits(codes: np.ndarray, width: int) -> np.ndarray:
    """Pack each row of unsigned ``codes`` (each below ``2**width``, width <= 32) into
    ``packed_length(size, width)`` bytes: a ``(rows, bytes)`` uint8 matrix."""
    if width <= 8:
        return _pack_words(codes, width)
    rows, size = codes.shape
    itemsize = 2 if width <= 16 else 4
    out = np.empty((rows, packed_length(size, width)), np.uint8)
    step = max(1, _CHUNK_VALUES // max(size, 1))  # the bit matrix takes 8 bytes a value
    for start in range(0, rows, step):
        part = codes[start : start + step].astype(f"<u{itemsize}")
        as_bytes = part.view(np.uint8).reshape(len(part), size, itemsize)
        bits = np.unpackbits(as_bytes, axis=2, bitorder="little")[:, :, :width]
        out[start : start + step] = np.packbits(
            bits.reshape(len(part), size * width), axis=1, bitorder="little"
        )
    return out


def unpack_bits(data: np.ndarray, count: int, width: int) -> np.ndarray:
    """The ``count`` codes of ``width`` bits in ``data`` (uint32); ``ValueError`` if the padding
    bits after the last code are not zero."""
    if width <= 8:
        return _unpack_words(data, count, width)
    bits = np.unpackbits(data, bitorder="little")
    if bits[count * width :].any():
        raise ValueError("padding bits after the last value are not zero")
    weights = np.left_shift(np.uint32(1), np.arange(width, dtype=np.uint32))
    matrix = bits[: count * width].reshape(count, width).astype(np.uint32)
    codes: np.ndarray = matrix @ weights
    return codes


# Eight codes of ``width`` bits fill exactly ``width`` bytes; for width <= 8 they fit one
# little-endian uint64, built with eight shifts over the whole matrix.


def _pack_words(codes: np.ndarray, width: int) -> np.ndarray:
    rows, size = codes.shape
    groups = -(-size // 8)
    padded = np.zeros((rows, groups * 8), np.uint64)
    padded[:, :size] = codes
    lanes = padded.reshape(rows, groups, 8)
    words = np.zeros((rows, groups), np.uint64)
    for j in range(8):
        words |= lanes[:, :, j] << np.uint64(j * width)
    as_bytes = words.astype("<u8").view(np.uint8).reshape(rows, groups, 8)[:, :, :width]
    return as_bytes.reshape(rows, groups * width)[:, : packed_length(size, width)]


def _unpack_words(data: np.ndarray, count: int, width: int) -> np.ndarray:
    groups = -(-count // 8)
    filled = np.zeros(groups * width, np.uint8)
    filled[: len(data)] = data
    as_bytes = np.zeros((groups, 8), np.uint8)
    as_bytes[:, :width] = filled.reshape(groups, width)
    words = as_bytes.view("<u8")[:, 0]
    mask = np.uint64((1 << width) - 1)
    codes = np.empty((groups, 8), np.uint32)
    for j in range(8):
        codes[:, j] = (words >> np.uint64(j * width)) & mask
    flat = codes.reshape(-1)
    if flat[count:].any():
        raise ValueError("padding bits after the last value are not zero")
    return flat[:count]


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """The LEB128 length in bytes of each unsigned value (uint64)."""
    lengths = np.ones(values.shape, np.int64)
    top = int(values.max(initial=0))
    shift = 7
    while top >> shift:
        lengths += (values >> np.uint64(shift)) != 0
        shift += 7
    return lengths


def max_varint_length(value: int) -> int:
    """Bytes of the LEB128 form of ``value``."""
    return max(1, -(-value.bit_length() // 7))


def encode_varints(values: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """LEB128 of each value, concatenated: seven bits a byte, lowest first, the high bit set on
    every byte but the last. ``lengths`` is ``varint_lengths(values)`` if already known."""
    if lengths is None:
        lengths = varint_lengths(values)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
    for j in range(int(lengths.max(initial=0))):
        sel = lengths > j
        low = (values[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lengths[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (low | more).astype(np.uint8)
    return out


def decode_varints(data: np.ndarray, count: int, max_length: int) -> np.ndarray:
    """Exactly ``count`` LEB128 values filling ``data``, each at most ``max_length`` bytes
    (``max_length <= 9``, so they fit uint64); ``ValueError`` otherwise."""
    ends = np.flatnonzero(data < 0x80)
    if len(ends) != count or (len(data) and (not count or ends[-1] != len(data) - 1)):
        raise ValueError(
            f"the varint section holds {len(ends)} complete values in {len(data)} bytes, "
            f"expected exactly {count}"
        )
    starts = np.empty(count, np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max(initial=0) > max_length:
        raise ValueError(f"a varint is longer than {max_length} bytes")
    values = np.zeros(count, np.uint64)
    for j in range(int(lengths.max(initial=0))):
        sel = lengths > j
        low = (data[starts[sel] + j] & 0x7F).astype(np.uint64)
        values[sel] |= low << np.uint64(7 * j)
    return values
