"""topk and randomk: which entries travel, the index coding, and refusals of lying payloads."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs import TopK, parse_codec
from tests.codecs.conformance import generators


def _f32(*values: float) -> bytes:
    return np.array(values, "<f4").tobytes()


def test_topk_keeps_the_largest_magnitudes() -> None:
    c = parse_codec("topk:0.4")  # k = 0.4 * 5 = 2

    out = c.decode(c.encode(np.array([0.1, -5.0, 3.0, 0.2, -4.0], np.float32)), 5)

    np.testing.assert_array_equal(out, [0, -5, 0, 0, -4])


def test_topk_breaks_ties_by_the_lower_index() -> None:
    c = parse_codec("topk:0.4")

    tied = c.decode(c.encode(np.array([0.5, 1.0, -1.0, 1.0, -1.0], np.float32)), 5)
    zeros = c.encode(np.zeros(5, np.float32))

    np.testing.assert_array_equal(tied, [0, 1, -1, 0, 0])
    assert zeros == bytes([1, 0b00011]) + _f32(0, 0)  # indices 0 and 1, as a bitmap


def test_topk_sends_a_nan_rather_than_hiding_it() -> None:
    c = parse_codec("topk:0.25")

    out = c.decode(c.encode(np.array([1.0, np.nan, 3.0, 2.0], np.float32)), 4)

    assert np.isnan(out[1]) and (out[[0, 2, 3]] == 0).all()


@pytest.mark.parametrize(
    ("fraction", "size", "k"),
    [
        (0.01, 100_000, 1000),
        (0.01, 50, 1),
        (0.01, 149, 1),
        (0.01, 150, 2),
        (1.0, 7, 7),
        (0.5, 0, 0),
    ],
)
def test_k_is_the_fraction_of_the_size_rounded_half_up_and_at_least_one(
    fraction: float, size: int, k: int
) -> None:
    assert TopK(fraction).count(size) == k


def test_a_bitmap_is_sent_when_it_is_shorter() -> None:
    # Indices 2 and 6 of 8: varint gaps 2, 3 take 2 bytes, the bitmap 0b01000100 one.
    c = parse_codec("topk:0.25")

    payload = c.encode(np.array([0, 0, 5, 0, 0, 0, -7, 0], np.float32))

    assert payload == bytes([1, 0x44]) + _f32(5, -7)


def test_delta_varints_are_sent_when_they_are_shorter() -> None:
    # Indices 3 and 900 of 1000: gaps 3 and 896 = 7 * 128 + 0, as varints 0x03 and 0x80 0x07
    # (3 bytes), against a bitmap of 125 bytes.
    vec = np.zeros(1000, np.float32)
    vec[3], vec[900] = 1.0, -2.0
    c = parse_codec("topk:0.002")

    payload = c.encode(vec)

    assert payload == bytes([0, 0x03, 0x80, 0x07]) + _f32(1, -2)
    np.testing.assert_array_equal(c.decode(payload, 1000), vec)


def test_the_value_codec_encodes_the_kept_values_only() -> None:
    vec = np.zeros(1000, np.float32)
    vec[3], vec[900] = 127.0, -2.0
    c = parse_codec("topk:0.002|int8")  # one block of 2 values: scale 1

    payload = c.encode(vec)

    assert (
        payload == bytes([0, 0x03, 0x80, 0x07]) + _f32(1) + np.array([127, -2], np.int8).tobytes()
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # k = 1000 gaps summing to at most 99,000: at most 773 reach 128 (a second byte) and 6
        # reach 16,384 (a third), so the varints take at most 1779 bytes (the bitmap 12,500).
        ("topk:0.01", 1 + 1779 + 4 * 1000),
        ("topk:0.01|int8", 1 + 1779 + 1000 + 4 * 4),
        ("randomk:0.01|sign", 1 + 1779 + 4 + 125),
        # k = 50,000: the bitmap (12,500 bytes) is shorter than any varints could be.
        ("topk:0.5", 1 + 12_500 + 4 * 50_000),
    ],
)
def test_wire_size_is_the_tag_the_shorter_index_bound_and_the_values(
    spec: str, expected: int
) -> None:
    assert parse_codec(spec).wire_size(100_000) == expected


def test_the_varint_bound_is_reached_by_evenly_spread_indices() -> None:
    # k = 10 of 2000: the gaps sum to at most 1990, so at most 10 of them reach 128; indices
    # 198, 397, ..., 1989 have ten gaps of 198, two varint bytes each.
    vec = np.zeros(2000, np.float32)
    vec[198::199] = 1.0
    c = parse_codec("topk:0.005")

    payload = c.encode(vec)

    assert len(payload) == c.wire_size(2000) == 1 + 20 + 4 * 10


def test_randomk_keeps_k_entries_scaled_by_size_over_k() -> None:
    vec = np.arange(1, 101, dtype=np.float32)
    c = parse_codec("randomk:0.05")

    out = c.decode(c.encode(vec, np.random.default_rng(0)), 100)

    kept = np.flatnonzero(out)
    assert len(kept) == 5
    np.testing.assert_allclose(out[kept], vec[kept] * 20)


def test_randomk_is_unbiased() -> None:
    # Each entry is kept with probability k / n = 1/4 and then scaled by 4, so a decoded entry is
    # 4 v with probability 1/4 and 0 otherwise: mean v, variance 3 v**2. Over N = 20000 seeds the
    # mean is off by a standard deviation of sqrt(3 / N) |v| = 0.0122 |v|; rtol 0.07 is > 5 of them.
    vec = np.array([1, -2, 3, -4, 5, -6, 7, -8], np.float32)
    c = parse_codec("randomk:0.25")
    n = 20000

    payloads = c.encode_rows(np.tile(vec, (n, 1)), generators(n, seed=9))

    decoded = np.array([c.decode(p, 8) for p in payloads])
    assert ((decoded != 0).sum(axis=1) == 2).all()
    np.testing.assert_allclose(decoded.mean(axis=0), vec, rtol=0.07)


@pytest.mark.parametrize(
    ("spec", "size", "payload", "message"),
    [
        ("topk:0.25", 8, bytes([2, 0x44]) + _f32(5, -7), "unknown index format tag 2"),
        ("topk:0.25", 8, bytes([1, 0x45]) + _f32(5, -7), "bitmap marks 3 indices, expected 2"),
        ("topk:0.2", 10, bytes([1, 0x03, 0x04]) + _f32(5, -7), "past the last of 10"),
        # k = 2 of 1000: gaps 3 and 1000 (0xE8 0x07); gaps 500 and 499 (indices 500 and 1000)
        ("topk:0.002", 1000, bytes([0, 3, 0xE8, 0x07]) + _f32(5, -7), "gap of 1000 runs past"),
        ("topk:0.002", 1000, bytes([0, 0xF4, 3, 0xF3, 3]) + _f32(5, -7), "index 1000 is out of"),
        ("topk:0.25", 8, bytes([0, 2]) + _f32(5, -7), "1 complete values in 1 bytes"),
        ("topk:0.002", 1000, bytes([0, 2, 0x83]) + _f32(5, -7), "expected exactly 2"),
        ("topk:0.002", 1000, bytes([0, 0x83, 0x80, 0, 5]) + _f32(5, -7), "longer than 2 bytes"),
        ("topk:0.25", 8, _f32(5, -7), "payload has 8 bytes; for 8 values it takes 9 to 10"),
        ("topk:0.25", 8, bytes([1, 0x44, 0]) + _f32(5, -7), "takes 9 to 10"),
    ],
)
def test_lying_payloads_are_refused(spec: str, size: int, payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_codec(spec).decode(payload, size)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("topk:1.5", r"topk fraction must be in \(0, 1\], got 1.5"),
        ("topk:0", r"topk fraction must be in \(0, 1\], got 0.0"),
        ("randomk:-0.1", r"randomk fraction must be in \(0, 1\]"),
        ("topk:nan", r"must be in \(0, 1\], got nan"),
        ("topk", "topk needs an argument, e.g. 'topk:0.01'"),
        ("topk:", "topk needs an argument"),
        ("randomk:lots", "randomk fraction must be a number, got 'lots'"),
    ],
)
def test_fractions_outside_zero_one_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_codec(spec)
