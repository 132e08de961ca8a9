"""Bit packing and varints against a plain reference: every width, ragged sizes, padding."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs._bits import (
    decode_varints,
    encode_varints,
    pack_bits,
    packed_length,
    unpack_bits,
)


def _reference_pack(codes: np.ndarray, width: int) -> np.ndarray:
    """Value i's bit b at bit i * width + b of the row, bit 0 the lowest of byte 0."""
    bits = (codes[:, :, None] >> np.arange(width, dtype=np.uint32)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(len(codes), -1), axis=1, bitorder="little")


@pytest.mark.parametrize("width", range(1, 18))
def test_pack_bits_matches_the_reference_and_unpacks(width: int) -> None:
    rng = np.random.default_rng(width)
    for size in (0, 1, 7, 8, 9, 1001):
        codes = rng.integers(0, 2**width, (3, size)).astype(np.uint32)

        packed = pack_bits(codes, width)

        assert packed.shape == (3, packed_length(size, width))
        np.testing.assert_array_equal(packed, _reference_pack(codes, width))
        for row, want in zip(packed, codes, strict=True):
            np.testing.assert_array_equal(unpack_bits(row, size, width), want)


@pytest.mark.parametrize("width", [3, 6, 9, 17])
def test_unpack_bits_refuses_set_padding_bits(width: int) -> None:
    packed = pack_bits(np.ones((1, 5), np.uint32), width)[0].copy()
    packed[-1] |= 0x80  # 5 * width is not a multiple of 8: the top bit is padding

    with pytest.raises(ValueError, match="padding bits"):
        unpack_bits(packed, 5, width)


def test_varints_are_leb128() -> None:
    values = np.array([0, 127, 128, 300, 2**21], np.uint64)

    data = encode_varints(values)

    assert data.tobytes() == bytes([0, 0x7F, 0x80, 0x01, 0xAC, 0x02, 0x80, 0x80, 0x80, 0x01])
    np.testing.assert_array_equal(decode_varints(data, 5, max_length=4), values)
    with pytest.raises(ValueError, match="longer than 3 bytes"):
        decode_varints(data, 5, max_length=3)
    with pytest.raises(ValueError, match="expected exactly 4"):
        decode_varints(data, 4, max_length=4)
    with pytest.raises(ValueError, match="expected exactly 5"):
        decode_varints(data[:-1], 5, max_length=4)
