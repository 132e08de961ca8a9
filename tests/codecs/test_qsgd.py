"""QSGD: the wire layout on a hand-computed vector, exact sizes, and unbiasedness."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs import parse_codec
from tests.codecs.conformance import generators


def test_levels_are_exact_where_the_ratio_is_a_whole_number() -> None:
    # ||v|| = 16, so |v_i| / ||v|| * s = 8 / 16 * 4 = 2 exactly: level 2, nothing left to chance.
    # Codes are 2 * level + negative = 4, 0, 5, 0, 4, 5, in 1 + bit_length(4) = 4 bits each.
    vec = np.array([8.0, 0.0, -8.0, 0.0, 8.0, -8.0], np.float32)
    c = parse_codec("qsgd:4")

    payload = c.encode(vec, np.random.default_rng(0))

    assert payload == np.float32(16.0).tobytes() + bytes([0x04, 0x05, 0x54])
    np.testing.assert_array_equal(c.decode(payload, 6), vec)


@pytest.mark.parametrize(
    ("levels", "bits"), [(1, 2), (3, 3), (4, 4), (16, 6), (127, 8), (128, 9), (32768, 17)]
)
def test_sizes_are_exact_at_one_sign_bit_plus_the_bits_of_s(levels: int, bits: int) -> None:
    c = parse_codec(f"qsgd:{levels}")
    vec = np.random.default_rng(0).standard_normal(1000).astype(np.float32)

    expected = 4 * 2 + -(-1000 * bits // 8)  # two buckets of at most 512 values: two norms
    assert c.wire_size(1000) == expected
    assert len(c.encode(vec, np.random.default_rng(0))) == expected


def test_each_value_lands_on_one_of_the_two_nearest_levels_of_its_bucket() -> None:
    c = parse_codec("qsgd:8")
    vec = np.random.default_rng(2).standard_normal(1200).astype(np.float32)
    vec[512:1024] *= 100  # the second bucket's norm is 100 times the others'
    step = np.concatenate(
        [np.full(len(b), np.linalg.norm(b) / 8) for b in np.split(vec, [512, 1024])]
    )

    out = c.decode(c.encode(vec, np.random.default_rng(3)), 1200)

    assert (np.abs(out - vec) <= step * (1 + 1e-5)).all()
    assert ((out == 0) | (np.sign(out) == np.sign(vec))).all()


def test_the_mean_over_many_seeds_is_the_input() -> None:
    # Each decoded value is norm / s * (floor(r) + Bernoulli(r - floor(r))): its variance is at
    # most (norm / s)**2 / 4, so over N seeds the mean is off by a standard deviation of at most
    # norm / (2 s sqrt(N)) = 0.995 / (2 * 2 * sqrt(20000)) = 0.0018. The tolerance, 0.01, is
    # more than 5 of those.
    vec = np.array([0.3, -0.5, 0.1, 0.0, 0.8], np.float32)
    c = parse_codec("qsgd:2")
    n = 20000

    payloads = c.encode_rows(np.tile(vec, (n, 1)), generators(n, seed=5))

    mean = np.mean([c.decode(p, 5) for p in payloads], axis=0)
    np.testing.assert_allclose(mean, vec, atol=0.01)


def test_a_level_above_s_is_refused() -> None:
    c = parse_codec("qsgd:5")  # 4-bit codes: code 12 is level 6
    with pytest.raises(ValueError, match="level 6, above its 5 levels"):
        c.decode(np.float32(1.0).tobytes() + bytes([0x0C]), 1)


def test_padding_bits_must_be_zero() -> None:
    c = parse_codec("qsgd:5")
    with pytest.raises(ValueError, match="padding bits"):
        c.decode(np.float32(1.0).tobytes() + bytes([0x12]), 1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("qsgd", "qsgd needs an argument, e.g. 'qsgd:16'"),
        ("qsgd:0", r"qsgd levels must be an integer in \[1, 32768\], got 0"),
        ("qsgd:32769", r"in \[1, 32768\], got 32769"),
        ("qsgd:1.5", "qsgd levels must be an integer, got '1.5'"),
    ],
)
def test_levels_out_of_range_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_codec(spec)
