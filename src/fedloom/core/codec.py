"""Codecs turn a flat update vector into the bytes that travel, and back.

Every codec reports its exact wire size: ``len(encode(vec))``. Byte counts in fedloom's metrics are
taken from these payloads, never estimated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class Codec(Protocol):
    """Encode a flat float32 vector to bytes and decode it back."""

    name: str

    def encode(self, vec: np.ndarray) -> bytes: ...

    def decode(self, data: bytes, size: int) -> np.ndarray: ...

    def wire_size(self, size: int) -> int:
        """The most bytes ``encode`` produces for ``size`` values (exact for fixed-width codecs);
        uploads longer than this are refused before they are read."""
        ...


class DtypeCodec:
    """Each parameter as one little-endian value of ``dtype``; decoding returns float32."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)

    def encode(self, vec: np.ndarray) -> bytes:
        return np.ascontiguousarray(vec, dtype=self.dtype).tobytes()

    def wire_size(self, size: int) -> int:
        return self.dtype.itemsize * size

    def decode(self, data: bytes, size: int) -> np.ndarray:
        expected = self.wire_size(size)
        if len(data) != expected:
            raise ValueError(
                f"payload has {len(data)} bytes, expected {expected} ({self.name} x {size})"
            )
        return np.frombuffer(data, dtype=self.dtype).astype(np.float32)


class Float32Codec(DtypeCodec):
    """Lossless float32: 4 bytes per parameter."""

    def __init__(self) -> None:
        super().__init__("float32", "<f4")


class Float16Codec(DtypeCodec):
    """Half precision: 2 bytes per parameter, relative error about 1e-3."""

    def __init__(self) -> None:
        super().__init__("float16", "<f2")


CODECS: dict[str, Callable[[], Codec]] = {"float32": Float32Codec, "float16": Float16Codec}


_INSTANCES: dict[str, Codec] = {}


def get_codec(name: str) -> Codec:
    """The codec registered under ``name`` (codecs hold no state: one instance per name)."""
    codec = _INSTANCES.get(name)
    if codec is None:
        try:
            codec = _INSTANCES[name] = CODECS[name]()
        except KeyError:
            raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None
    return codec
