"""Codec chains: ``chain(topk(0.01), int8(), zstd())`` in Python, ``"topk:0.01|int8|zstd"`` as a
spec, ``[topk: 0.01, int8, zstd]`` in a YAML config.

A chain has at most one stage of each kind, in this order::

    sparsifier (topk:F, randomk:F)  ->  value codec (float32, float16, bfloat16, int8, int4,
                                        qsgd:S, sign)  ->  lossless (zstd, zstd:LEVEL)

The value codec defaults to float32. A codec's ``name`` is its canonical spec: the stages in
order, arguments in their shortest form, and the defaults (float32 after a sparsifier, zstd's
level 3) left out, so ``"topk:1e-2|float32|zstd:3"`` is named ``"topk:0.01|zstd"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from fedloom.codecs.base import STAGES, Codec, Lossless, Sparsifier, Stage, ValueCodec
from fedloom.codecs.dtype import Float32Codec
from fedloom.codecs.sparsify import SparseCodec

_RANK = {Sparsifier.kind: 0, ValueCodec.kind: 1, Lossless.kind: 2}
_LABEL = {
    Sparsifier.kind: "sparsifier (topk, randomk)",
    ValueCodec.kind: "value codec (float32, float16, bfloat16, int8, int4, qsgd, sign)",
    Lossless.kind: "lossless stage (zstd)",
}


def chain(*stages: Stage) -> Codec:
    """The codec that applies ``stages`` in order; ``chain()`` is float32."""
    for stage in stages:
        if not isinstance(stage, (Sparsifier, ValueCodec, Lossless)):
            raise TypeError(
                f"{stage!r} is not a chain stage: build stages with topk(), int8(), zstd(), ..."
            )
    return _compose(stages, "|".join(s.name for s in stages))


def parse_codec(spec: str) -> Codec:
    """The codec a spec names, e.g. ``"topk:0.01|int8|zstd"`` (uncached; see
    ``fedloom.core.codec.get_codec``). ``ValueError`` naming the problem for a bad spec."""
    if not spec.strip():
        raise ValueError("empty codec spec; write 'float32' to send updates as they are")
    stages = []
    for token in spec.split("|"):
        name, colon, arg = token.strip().partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"empty stage in codec spec {spec!r}: separate stages with one '|'")
        build = STAGES.get(name)
        if build is None:
            raise ValueError(f"unknown codec {name!r} in {spec!r}; choose from {sorted(STAGES)}")
        stages.append(build(arg.strip() if colon else None))
    return _compose(stages, spec)


def codec_spec(items: str | Sequence[str | Mapping[str, Any]]) -> str:
    """The canonical spec of a chain written as a YAML list: ``[{"topk": 0.01}, "int8", "zstd"]``
    gives ``"topk:0.01|int8|zstd"``, and ``[]`` gives ``"float32"``."""
    if isinstance(items, str):
        return parse_codec(items).name
    tokens = []
    for item in items:
        if isinstance(item, str):
            tokens.append(item)
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, arg),) = item.items()
            tokens.append(str(name) if arg is None else f"{name}:{arg}")
        else:
            raise ValueError(
                f"a codec chain stage is a name or a one-key mapping such as {{'topk': 0.01}}, "
                f"got {item!r}"
            )
    return parse_codec("|".join(tokens)).name if tokens else "float32"


def _compose(stages: Sequence[Stage], spec: str) -> Codec:
    for kind, label in _LABEL.items():
        found = [s.name for s in stages if s.kind == kind]
        if len(found) > 1:
            raise ValueError(
                f"a codec chain takes at most one {label}, got {' and '.join(found)} in {spec!r}"
            )
    for before, after in pairwise(stages):
        if _RANK[after.kind] < _RANK[before.kind]:
            if isinstance(before, Lossless):
                raise ValueError(
                    f"{before.name} must come last: a lossless stage compresses the bytes of the "
                    f"stages before it (got {spec!r})"
                )
            raise ValueError(
                f"{after.name} must come before {before.name}: a sparsifier picks the entries "
                f"that the value codec then encodes (got {spec!r})"
            )
    sparsifier = next((s for s in stages if isinstance(s, Sparsifier)), None)
    values = next((s for s in stages if isinstance(s, ValueCodec)), None) or Float32Codec()
    lossless = next((s for s in stages if isinstance(s, Lossless)), None)
    codec: Codec = values if sparsifier is None else SparseCodec(sparsifier, values)
    return codec if lossless is None else lossless.wrap(codec)
