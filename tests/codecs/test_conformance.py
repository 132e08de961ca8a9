"""The codec conformance suite: every codec in CODEC_SPECS keeps the Codec contract.

- a payload decodes to a float32 vector of the size it was encoded from, and never takes more
  bytes than ``wire_size`` declares;
- ``encode_rows`` gives exactly the bytes of ``encode`` per row (the batched path is exact);
- the same generator state gives the same bytes; deterministic codecs ignore generators and
  stochastic ones refuse to run without one;
- a payload that was truncated, extended, corrupted or made up raises ``ValueError``, or decodes
  to a vector of the right size: nothing else (no IndexError, no allocation from a lying header);
- a non-finite update stays visibly non-finite after a round trip, so the server refuses it.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.codecs import base, parse_codec
from fedloom.core.codec import get_codec
from tests.codecs.conformance import (
    CODEC_SPECS,
    SIZES,
    codec,
    generators,
    has_sparsifier,
    samples,
)

SPECS = pytest.mark.parametrize("spec", CODEC_SPECS)


def _encode(spec: str, vec: np.ndarray, seed: int = 0) -> bytes:
    c = codec(spec)
    return c.encode(vec, np.random.default_rng(seed) if c.stochastic else None)


@SPECS
def test_round_trip_gives_a_fresh_float32_vector_of_the_size(spec: str) -> None:
    c = codec(spec)
    for size in SIZES:
        for name, vec in samples(size).items():
            out = c.decode(_encode(spec, vec), size)

            assert out.dtype == np.float32 and out.shape == (size,), (name, size)
            assert np.isfinite(out).all(), (name, size)
            out[:] = 1.0  # decode hands out a writable vector of its own


@SPECS
def test_zeros_decode_to_zeros(spec: str) -> None:
    out = codec(spec).decode(_encode(spec, np.zeros(300, np.float32)), 300)

    np.testing.assert_array_equal(out, np.zeros(300, np.float32))


@SPECS
def test_payloads_fit_the_declared_wire_size(spec: str) -> None:
    c = codec(spec)
    for size in (*SIZES, 4097):
        for seed in range(3):
            for name, vec in samples(size, seed).items():
                assert len(_encode(spec, vec, seed)) <= c.wire_size(size), (name, size)


@SPECS
def test_encode_rows_gives_the_bytes_of_encode_per_row(spec: str) -> None:
    c = codec(spec)
    for size in (1, 257, 3000):
        rows = np.stack([*samples(size, seed=1).values(), *samples(size, seed=2).values()])
        rngs = generators(len(rows), seed=7) if c.stochastic else None

        batched = c.encode_rows(rows, rngs)

        alone = [
            c.encode(row, g) for row, g in zip(rows, generators(len(rows), seed=7), strict=True)
        ]
        assert batched == alone, size
    assert c.encode_rows(np.zeros((0, 5), np.float32), [] if c.stochastic else None) == []


@SPECS
def test_encode_rows_gives_the_same_bytes_in_blocks_of_any_size(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = codec(spec)
    rows = np.stack(list(samples(700, seed=3).values()))
    whole = c.encode_rows(rows, generators(len(rows)) if c.stochastic else None)

    monkeypatch.setattr(base, "BATCH_VALUES", 1500)  # blocks of two rows, then one

    assert c.encode_rows(rows, generators(len(rows)) if c.stochastic else None) == whole


@SPECS
def test_same_generator_state_gives_the_same_bytes(spec: str) -> None:
    c = codec(spec)
    vec = samples(500)["normal"]
    first = c.encode(vec, np.random.default_rng(3))
    assert c.encode(vec, np.random.default_rng(3)) == first
    if c.stochastic:
        assert c.encode(vec, np.random.default_rng(4)) != first
        with pytest.raises(ValueError, match="stochastic"):
            c.encode(vec)
        with pytest.raises(ValueError, match="one per row"):
            c.encode_rows(np.stack([vec, vec]), generators(1))
    else:
        assert c.encode(vec) == first


@SPECS
def test_name_is_a_canonical_spec(spec: str) -> None:
    c = codec(spec)

    again = parse_codec(c.name)

    assert again.name == c.name
    assert again.stochastic == c.stochastic
    assert again.wire_size(1000) == c.wire_size(1000)
    assert get_codec(spec) is get_codec(spec)


@SPECS
def test_truncated_extended_and_empty_payloads_are_refused(spec: str) -> None:
    c = codec(spec)
    for size in (1, 7, 300):
        for name, vec in samples(size).items():
            payload = _encode(spec, vec)
            for bad in (payload[:-1], payload + b"\x00", payload + b"\xff", b""):
                with pytest.raises(ValueError):
                    c.decode(bad, size)
            if not has_sparsifier(spec):  # k of a larger size can be the same k
                with pytest.raises(ValueError):
                    c.decode(payload, size + 8)  # a size the payload was not made for
            assert c.decode(payload, size).shape == (size,), name


@SPECS
def test_garbage_and_corrupted_payloads_raise_value_error_or_decode_to_the_size(
    spec: str,
) -> None:
    c = codec(spec)
    rng = np.random.default_rng(11)
    size = 300
    payload = _encode(spec, samples(size)["normal"])
    candidates = [rng.bytes(int(n)) for n in rng.integers(0, c.wire_size(size) + 8, 60)]
    candidates += [rng.bytes(len(payload)) for _ in range(20)]
    for _ in range(120):
        corrupted = bytearray(payload)
        for at in rng.integers(0, len(payload), int(rng.integers(1, 4))):
            corrupted[at] ^= int(rng.integers(1, 256))
        candidates.append(bytes(corrupted))
    for data in candidates:
        try:
            out = c.decode(data, size)
        except ValueError:
            continue
        assert out.dtype == np.float32 and out.shape == (size,)


@SPECS
def test_non_finite_updates_stay_non_finite(spec: str) -> None:
    c = codec(spec)
    for poison in (np.nan, np.inf, -np.inf):
        vec = samples(600)["normal"]
        vec[123] = poison

        out = c.decode(_encode(spec, vec), 600)  # no warning either: tests turn them into errors

        if not spec.startswith("randomk"):  # random-k may leave the poisoned entry out
            assert not np.isfinite(out).all(), poison


@SPECS
def test_bad_shapes_and_sizes_are_refused(spec: str) -> None:
    c = codec(spec)
    rngs = generators(1) if c.stochastic else None
    with pytest.raises(ValueError, match="flat vector"):
        c.encode(np.zeros((2, 3), np.float32), rngs[0] if rngs else None)
    with pytest.raises(ValueError, match="matrix"):
        c.encode_rows(np.zeros(3, np.float32), rngs)
    with pytest.raises(ValueError, match="size"):
        c.wire_size(-1)


@SPECS
def test_float64_inputs_are_encoded_as_float32(spec: str) -> None:
    vec = samples(64)["normal"]

    assert _encode(spec, vec.astype(np.float64)) == _encode(spec, vec)
