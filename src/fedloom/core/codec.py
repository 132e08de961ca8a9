"""Codecs turn a flat update vector into the bytes that travel, and back.

This module is the interface the rest of fedloom uses; the codecs themselves live in
``fedloom.codecs``. ``get_codec(spec)`` builds the codec a spec names (``"float32"``,
``"topk:0.01|int8|zstd"``) once and hands out the same instance after: codecs hold no state.
Every codec declares the most bytes it can produce (``wire_size``); byte counts in fedloom's metrics
are taken from the payloads, never estimated.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedloom.codecs import (
    STAGES,
    Codec,
    DtypeCodec,
    Float16Codec,
    Float32Codec,
    StageBuilder,
    parse_codec,
)

CODECS: Mapping[str, StageBuilder] = STAGES
"""The stage names a codec spec may use, and their builders (``fedloom.codecs.register_stage``)."""

_INSTANCES: dict[str, Codec] = {}


def get_codec(spec: str) -> Codec:
    """The codec ``spec`` names, built once per spec; ``ValueError`` naming what is wrong with a
    bad spec (an unknown name lists the known ones)."""
    codec = _INSTANCES.get(spec)
    if codec is None:
        codec = _INSTANCES[spec] = parse_codec(spec)
    return codec


__all__ = ["CODECS", "Codec", "DtypeCodec", "Float16Codec", "Float32Codec", "get_codec"]
