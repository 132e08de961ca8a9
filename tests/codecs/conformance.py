"""Shared fixtures of the codec conformance suite: the codecs under test and sample vectors.

Every codec must pass every test in ``test_conformance.py``. To put a new codec (or chain) under
the whole suite, add its spec to ``CODEC_SPECS``.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs import Codec, parse_codec

CODEC_SPECS: list[str] = [
    # value codecs
    "float32",
    "float16",
    "bfloat16",
    "int8",
    "int4",
    "qsgd:1",
    "qsgd:16",
    "qsgd:32768",
    "sign",
    # sparsifiers, alone and followed by a value codec
    "topk:0.01",
    "topk:0.5",
    "topk:1",
    "randomk:0.1",
    "topk:0.01|int8",
    "topk:0.1|int4",
    "topk:0.05|sign",
    "topk:0.2|bfloat16",
    "randomk:0.25|qsgd:4",
    # lossless over each kind
    "zstd",
    "float16|zstd:1",
    "int8|zstd",
    "qsgd:16|zstd",
    "sign|zstd",
    "topk:0.01|int8|zstd",
    "randomk:0.1|float16|zstd:19",
]

SIZES = (0, 1, 7, 255, 256, 257, 1000)
"""Empty, single, shorter than a byte of bits, around a quantisation block, and bigger."""

SPARSE = ("topk", "randomk")


def codec(spec: str) -> Codec:
    return parse_codec(spec)


def has_sparsifier(spec: str) -> bool:
    return spec.startswith(SPARSE)


def samples(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Vectors of ``size`` values that stress different paths: dense normal values, heavy tails,
    exact zeros, ties of magnitude, one spike, and evenly spread spikes (the longest index gaps)."""
    rng = np.random.default_rng(seed)
    spread = np.zeros(size, np.float32)
    spread[:: max(1, size // 7)] = 3.0
    ties = np.where(np.arange(size) % 2 == 0, 1.0, -1.0).astype(np.float32)
    spike = np.zeros(size, np.float32)
    spike[size // 2 : size // 2 + 1] = -1e4
    mostly_zero = np.where(rng.random(size) < 0.005, rng.standard_normal(size), 0.0)
    return {
        "normal": rng.standard_normal(size).astype(np.float32),
        "heavy": (rng.standard_cauchy(size) * 1e-3).astype(np.float32),
        "zeros": np.zeros(size, np.float32),
        "ties": ties,
        "spike": spike,
        "spread": spread,
        "mostly_zero": mostly_zero.astype(np.float32),
    }


def generators(count: int, seed: int = 0) -> list[np.random.Generator]:
    """``count`` independent generators, reproducible from ``seed``."""
    return [np.random.default_rng([seed, i]) for i in range(count)]
