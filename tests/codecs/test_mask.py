"""The bitmask codec of pruning masks: one bit a value, exact, and only for 0/1 vectors."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs import parse_codec


def test_a_mask_round_trips_in_one_bit_a_value() -> None:
    codec = parse_codec("bitmask")
    mask = np.array([1, 0, 0, 1, 1, 0, 1, 0, 1], np.float32)

    payload = codec.encode(mask)

    # bits 0, 3, 4, 6 of byte 0 (0b01011001 = 89) and bit 0 of byte 1
    assert payload == bytes([89, 1])
    assert codec.wire_size(9) == 2
    np.testing.assert_array_equal(codec.decode(payload, 9), mask)


def test_values_other_than_zero_and_one_are_refused() -> None:
    with pytest.raises(ValueError, match="0/1 masks only"):
        parse_codec("bitmask").encode(np.array([1.0, 0.5], np.float32))


def test_a_payload_with_padding_bits_set_is_refused() -> None:
    with pytest.raises(ValueError, match="padding bits"):
        parse_codec("bitmask").decode(bytes([0b1000]), 3)
