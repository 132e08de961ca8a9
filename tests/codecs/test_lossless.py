"""zstd: lossless over any codec, a declared size from zstd's compress bound, and a decoder that
refuses frames that lie about their size before allocating anything for them."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from fedloom.codecs import parse_codec
from fedloom.codecs.lossless import compress_bound


def test_zstd_round_trips_the_inner_payload_exactly() -> None:
    vec = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    vec[::3] = 0.0

    for inner in ("float32", "topk:0.01|int8", "sign", "randomk:0.1|qsgd:8"):
        plain, packed = parse_codec(inner), parse_codec(f"{inner}|zstd")
        raw = plain.encode(vec, np.random.default_rng(1))

        payload = packed.encode(vec, np.random.default_rng(1))

        assert zstandard.ZstdDecompressor().decompress(payload) == raw
        np.testing.assert_array_equal(packed.decode(payload, 3000), plain.decode(raw, 3000))


@pytest.mark.parametrize(
    ("size", "bound"),
    [
        (0, 64),  # the margin (128 KiB - size) >> 11 covers the frame header of tiny inputs
        (1000, 1000 + 3 + 63),
        (128 << 10, (128 << 10) + 512),
        (1 << 20, (1 << 20) + 4096),
    ],
)
def test_compress_bound_is_zstds(size: int, bound: int) -> None:
    assert compress_bound(size) == bound


def test_wire_size_is_the_compress_bound_of_the_inner_wire_size() -> None:
    assert parse_codec("zstd").wire_size(1000) == compress_bound(4000) == 4077
    assert parse_codec("int8|zstd").wire_size(1000) == compress_bound(1016)


@pytest.mark.parametrize("level", [1, 3, 19, 22])
def test_incompressible_payloads_stay_within_the_bound(level: int) -> None:
    rng = np.random.default_rng(level)
    c = parse_codec(f"zstd:{level}")
    for size in (0, 1, 100, 40_000, 70_000):
        noise = rng.integers(0, 2**32, size, dtype=np.uint32).view(np.float32)

        assert len(c.encode(noise)) <= c.wire_size(size)


def test_a_frame_declaring_more_than_the_inner_codec_can_produce_is_refused() -> None:
    frame = zstandard.ZstdCompressor().compress(b"\x00" * 4001)

    with pytest.raises(ValueError, match="declares 4001 bytes, more than the 4000 that float32"):
        parse_codec("zstd").decode(frame, 1000)


def test_a_frame_without_its_size_is_read_up_to_the_inner_maximum_only() -> None:
    undeclared = zstandard.ZstdCompressor(write_content_size=False)
    bomb = undeclared.compress(b"\x00" * 50_000_000)  # 50 MB in a few kB
    fine = undeclared.compress(np.arange(1000, dtype="<f4").tobytes())

    with pytest.raises(ValueError, match="does not decompress"):
        parse_codec("zstd").decode(bomb, 1000)
    np.testing.assert_array_equal(parse_codec("zstd").decode(fine, 1000), np.arange(1000))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"definitely not zstd", "not a zstd frame"),
        (b"", "not a zstd frame"),
        (zstandard.ZstdCompressor().compress(b"\x00" * 4000) + b"\x00", "does not decompress"),
        (zstandard.ZstdCompressor().compress(bytes(range(200)) * 20)[:-2], "does not decompress"),
        (zstandard.ZstdCompressor().compress(b"\x00" * 3999), "payload has 3999 bytes, expected"),
        (b"\x28\xb5\x2f\xfd" + b"\x00" * 4100, "more than the 4077 it can take"),
    ],
)
def test_broken_frames_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_codec("zstd").decode(payload, 1000)


@pytest.mark.parametrize(
    ("spec", "name"), [("zstd", "zstd"), ("zstd:3", "zstd"), ("zstd:19", "zstd:19")]
)
def test_the_default_level_is_left_out_of_the_name(spec: str, name: str) -> None:
    assert parse_codec(spec).name == name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("zstd:0", r"zstd level must be an integer in \[1, 22\], got 0"),
        ("zstd:23", r"zstd level must be an integer in \[1, 22\], got 23"),
        ("zstd:max", "zstd level must be an integer, got 'max'"),
    ],
)
def test_levels_out_of_range_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_codec(spec)
