"""Codecs turn a flat update vector into the bytes that travel, and back.

Every codec reports its exact wire size: ``len(encode(vec))``. Byte counts in fedloom's metrics are
taken from these payloads, never estimated.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Codec(Protocol):
    """Encode a flat float32 vector to bytes and decode it back."""

    name: str

    def encode(self, vec: np.ndarray) -> bytes: ...

    def decode(self, data: bytes, size: int) -> np.ndarray: ...


class Float32Codec:
    """Lossless little-endian float32: 4 bytes per parameter."""

    name = "float32"

    def encode(self, vec: np.ndarray) -> bytes:
        return np.ascontiguousarray(vec, dtype="<f4").tobytes()

    def decode(self, data: bytes, size: int) -> np.ndarray:
        if len(data) != 4 * size:
            raise ValueError(
                f"payload has {len(data)} bytes, expected {4 * size} (float32 x {size})"
            )
        return np.frombuffer(data, dtype="<f4").astype(np.float32)


class Float16Codec:
    """Half precision: 2 bytes per parameter, relative error about 1e-3."""

    name = "float16"

    def encode(self, vec: np.ndarray) -> bytes:
        return np.ascontiguousarray(vec, dtype="<f2").tobytes()

    def decode(self, data: bytes, size: int) -> np.ndarray:
        if len(data) != 2 * size:
            raise ValueError(
                f"payload has {len(data)} bytes, expected {2 * size} (float16 x {size})"
            )
        return np.frombuffer(data, dtype="<f2").astype(np.float32)


CODECS: dict[str, type[Float32Codec] | type[Float16Codec]] = {
    "float32": Float32Codec,
    "float16": Float16Codec,
}


def get_codec(name: str) -> Codec:
    """The codec registered under ``name``."""
    try:
        return CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None
