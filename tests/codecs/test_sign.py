"""Scaled sign: the wire layout on a hand-computed vector and exact sizes."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs import parse_codec


def test_one_bit_a_value_and_the_mean_magnitude_as_scale() -> None:
    # mean|v| = (1 + 2 + 0 + 3 + 0.5 + 1 + 4 + 0.5 + 6) / 9 = 2; negatives at indices 1, 5 and 8:
    # bits 0b00100010 then 0b00000001.
    vec = np.array([1.0, -2.0, 0.0, 3.0, 0.5, -1.0, 4.0, 0.5, -6.0], np.float32)
    c = parse_codec("sign")

    payload = c.encode(vec)

    assert payload == np.float32(2.0).tobytes() + bytes([0x22, 0x01])
    np.testing.assert_array_equal(c.decode(payload, 9), [2, -2, 2, 2, 2, -2, 2, 2, -2])


@pytest.mark.parametrize(("size", "expected"), [(0, 4), (1, 5), (8, 5), (9, 6), (100_000, 12_504)])
def test_sizes_are_exact(size: int, expected: int) -> None:
    c = parse_codec("sign")

    assert c.wire_size(size) == expected
    assert len(c.encode(np.ones(size, np.float32))) == expected


def test_padding_bits_must_be_zero() -> None:
    with pytest.raises(ValueError, match="padding bits"):
        parse_codec("sign").decode(np.float32(1.0).tobytes() + bytes([0x02]), 1)
