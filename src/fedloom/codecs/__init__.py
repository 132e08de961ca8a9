"""Codecs: what an update looks like on the wire. Chainable: a sparsifier, then a value codec, then
lossless compression, as ``chain(topk(0.01), int8(), zstd())`` or the spec
``"topk:0.01|int8|zstd"``. Every codec declares its largest payload (``wire_size``) and refuses a
payload it cannot have produced."""

from fedloom.codecs.base import (
    STAGES,
    BatchCodec,
    Codec,
    Lossless,
    Sparsifier,
    Stage,
    StageBuilder,
    ValueCodec,
    register_stage,
)
from fedloom.codecs.chain import chain, codec_spec, parse_codec
from fedloom.codecs.dtype import (
    BFloat16Codec,
    DtypeCodec,
    Float16Codec,
    Float32Codec,
    bfloat16,
    float16,
    float32,
)
from fedloom.codecs.lossless import Zstd, ZstdCodec, zstd
from fedloom.codecs.mask import BitmaskCodec, bitmask
from fedloom.codecs.qsgd import QSGDCodec, qsgd
from fedloom.codecs.quantize import BLOCK, BlockQuantCodec, int4, int8
from fedloom.codecs.sign import SignCodec, sign
from fedloom.codecs.sparsify import RandomK, SparseCodec, TopK, randomk, topk

__all__ = [
    "BLOCK",
    "STAGES",
    "BFloat16Codec",
    "BatchCodec",
    "BitmaskCodec",
    "BlockQuantCodec",
    "Codec",
    "DtypeCodec",
    "Float16Codec",
    "Float32Codec",
    "Lossless",
    "QSGDCodec",
    "RandomK",
    "SignCodec",
    "SparseCodec",
    "Sparsifier",
    "Stage",
    "StageBuilder",
    "TopK",
    "ValueCodec",
    "Zstd",
    "ZstdCodec",
    "bfloat16",
    "bitmask",
    "chain",
    "codec_spec",
    "float16",
    "float32",
    "int4",
    "int8",
    "parse_codec",
    "qsgd",
    "randomk",
    "register_stage",
    "sign",
    "topk",
    "zstd",
]
