"""int8 and int4: exact bytes on hand-computed blocks, exact sizes, and the error bound."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs import BLOCK, parse_codec


def test_int8_writes_the_block_scale_then_one_byte_a_value() -> None:
    # max|v| = 127, so the scale is exactly 1 and q = round(v), ties to even.
    vec = np.array([127.0, -64.4, 3.5, 0.0, 2.5, -100.6], np.float32)
    c = parse_codec("int8")

    payload = c.encode(vec)

    assert (
        payload
        == np.float32(1.0).tobytes() + np.array([127, -64, 4, 0, 2, -101], np.int8).tobytes()
    )
    np.testing.assert_array_equal(c.decode(payload, 6), [127, -64, 4, 0, 2, -101])


def test_int4_packs_two_values_a_byte_low_nibble_first() -> None:
    # max|v| = 7: the scale is 1 and q = [7, -3, 2, 0, -7, 1, 5]; as nibbles (two's complement)
    # 7, 0xD, 2, 0, 9, 1, 5 and a zero pad: bytes 0xD7, 0x02, 0x19, 0x05.
    vec = np.array([7.0, -3.4, 2.5, 0.5, -7.0, 1.2, 5.0], np.float32)
    c = parse_codec("int4")

    payload = c.encode(vec)

    assert payload == np.float32(1.0).tobytes() + bytes([0xD7, 0x02, 0x19, 0x05])
    np.testing.assert_array_equal(c.decode(payload, 7), [7, -3, 2, 0, -7, 1, 5])


@pytest.mark.parametrize(
    ("spec", "size", "expected"),
    [
        ("int8", 1000, 1000 + 4 * 4),  # ceil(1000 / 256) = 4 scales
        ("int8", 256, 256 + 4),
        ("int8", 257, 257 + 4 * 2),
        ("int8", 0, 0),
        ("int4", 1000, 500 + 4 * 4),
        ("int4", 1001, 501 + 4 * 4),
        ("int4", 1, 1 + 4),
    ],
)
def test_sizes_are_exact(spec: str, size: int, expected: int) -> None:
    c = parse_codec(spec)
    vec = np.random.default_rng(0).standard_normal(size).astype(np.float32)

    assert c.wire_size(size) == expected
    assert len(c.encode(vec)) == expected


@pytest.mark.parametrize(("spec", "qmax"), [("int8", 127), ("int4", 7)])
def test_error_is_at_most_half_a_step_of_the_block(spec: str, qmax: int) -> None:
    # Each block's step is scale = max|block| / qmax, and rounding to the nearest step is off by at
    # most scale / 2. The float32 division and product add a few ulps of max|block| on top.
    rng = np.random.default_rng(1)
    magnitudes = np.repeat([1000.0, 1e-3, 1.0, 5.0], [256, 256, 256, 232])  # one per block
    vec = (rng.standard_normal(1000) * magnitudes).astype(np.float32)
    c = parse_codec(spec)

    out = c.decode(c.encode(vec), 1000)

    padded = np.pad(np.abs(vec), (0, 4 * BLOCK - 1000))
    block_max = np.repeat(padded.reshape(4, BLOCK).max(axis=1), BLOCK)[:1000]
    bound = block_max / (2 * qmax) + block_max * 2.0**-21
    assert (np.abs(out - vec) <= bound).all()
    # A block of small values keeps its own precision next to a block of large ones.
    # (|N(0, 1)| < 5 in 256 draws, so that block's max is below 5e-3.)
    assert np.abs(out - vec)[256:512].max() <= 5e-3 / (2 * qmax)


def test_int4_refuses_a_non_zero_padding_nibble() -> None:
    c = parse_codec("int4")
    payload = bytearray(c.encode(np.ones(7, np.float32)))
    payload[-1] |= 0x30

    with pytest.raises(ValueError, match="padding nibble"):
        c.decode(bytes(payload), 7)


@pytest.mark.parametrize("spec", ["int8", "int4"])
def test_quantisers_take_no_argument(spec: str) -> None:
    with pytest.raises(ValueError, match=f"{spec} takes no argument"):
        parse_codec(f"{spec}:3")
