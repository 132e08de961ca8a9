"""float32, float16 and bfloat16: exact sizes, exact bytes, rounding to nearest even."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs import parse_codec


def test_float32_is_exact_and_takes_four_bytes_a_value() -> None:
    vec = np.array([0.1, -3.5, 1e-30, 3e38], np.float32)
    c = parse_codec("float32")

    payload = c.encode(vec)

    assert payload == vec.astype("<f4").tobytes()
    assert len(payload) == c.wire_size(4) == 16
    np.testing.assert_array_equal(c.decode(payload, 4), vec)


def test_float16_rounds_to_nearest_and_overflows_to_infinity() -> None:
    c = parse_codec("float16")
    # 1 + 2**-11 lies halfway between 1 and the next half, 1 + 2**-10: ties go to the even 1.
    # 1 + 3 * 2**-11 lies halfway between 1 + 2**-10 and 1 + 2**-9: even is 1 + 2**-9.
    vec = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 1e5], np.float32)

    out = c.decode(c.encode(vec), 4)

    assert c.wire_size(4) == 8
    np.testing.assert_array_equal(out, [1.0, 1 + 2**-9, 65504.0, np.inf])


def test_bfloat16_keeps_the_top_16_bits_rounded_to_nearest_even() -> None:
    c = parse_codec("bfloat16")
    # bfloat16 has 7 mantissa bits: the neighbours of 1 are 1 - 2**-8 and 1 + 2**-7.
    # 1 + 2**-8 is a tie between 1 (even) and 1 + 2**-7: 1. 1 + 3 * 2**-8 is a tie between
    # 1 + 2**-7 (odd) and 1 + 2**-6 (even): 1 + 2**-6. 1 + 2**-8 + 2**-20 is above the tie: up.
    # 1000 = 0b1111101000 needs 7 bits after the leading one: exact.
    vec = np.array(
        [1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.0, 1000.0, np.inf, np.nan], np.float32
    )

    payload = c.encode(vec)
    out = c.decode(payload, 7)

    assert len(payload) == c.wire_size(7) == 14
    np.testing.assert_array_equal(out[:6], [1.0, 1 + 2**-6, 1 + 2**-7, -2.0, 1000.0, np.inf])
    assert np.isnan(out[6])
    assert payload[:2] == bytes([0x80, 0x3F])  # 1.0 is float32 0x3F800000, little-endian halves


def test_bfloat16_rounds_the_largest_finite_values_up_to_infinity() -> None:
    c = parse_codec("bfloat16")
    biggest = np.float32(np.finfo(np.float32).max)  # 0x7F7FFFFF: rounds past bfloat16's max

    assert c.decode(c.encode(np.array([biggest, -biggest])), 2).tolist() == [np.inf, -np.inf]


@pytest.mark.parametrize("spec", ["float32", "float16", "bfloat16"])
def test_a_payload_of_the_wrong_length_is_refused(spec: str) -> None:
    c = parse_codec(spec)
    width = c.wire_size(1)

    with pytest.raises(
        ValueError, match=f"payload has {3 * width - 1} bytes, expected {3 * width}"
    ):
        c.decode(b"\x00" * (3 * width - 1), 3)
