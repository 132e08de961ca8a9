"""Chains: the spec grammar, its errors, canonical names, the YAML list form and the Python form."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml

from fedloom.codecs import (
    STAGES,
    Float16Codec,
    chain,
    codec_spec,
    int8,
    parse_codec,
    qsgd,
    randomk,
    topk,
    zstd,
)
from fedloom.core import codec as core_codec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "zstd|topk:0.01",
            "zstd must come last: a lossless stage compresses the bytes of the stages before it "
            "(got 'zstd|topk:0.01')",
        ),
        (
            "int8|topk:0.01",
            "topk:0.01 must come before int8: a sparsifier picks the entries that the value "
            "codec then encodes (got 'int8|topk:0.01')",
        ),
        ("int4:3", "int4 takes no argument, got int4:3"),
        ("", "empty codec spec; write 'float32' to send updates as they are"),
    ],
)
def test_bad_specs_say_what_is_wrong_and_what_to_do(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_codec(spec)

    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("int8|zstd:5|topk:0.1", "zstd:5 must come last"),
        ("topk:0.1|randomk:0.1", r"at most one sparsifier .*, got topk:0.1 and randomk:0.1"),
        ("int8|float16", r"at most one value codec .*, got int8 and float16 in 'int8\|float16'"),
        ("zstd|zstd:5", "at most one lossless stage"),
        ("zip", r"unknown codec 'zip' in 'zip'; choose from \['bfloat16', 'bitmask', 'float16', "),
        ("topk:0.1|gzip", "unknown codec 'gzip'"),
        ("topk:0.1||int8", r"empty stage in codec spec 'topk:0.1\|\|int8'"),
        ("float32:2", "float32 takes no argument"),
    ],
)
def test_bad_specs_are_refused(spec: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        parse_codec(spec)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("float32", "float32"),
        ("topk:1e-2|float32|zstd:3", "topk:0.01|zstd"),
        (" topk : 0.01 | int8 ", "topk:0.01|int8"),
        ("float32|zstd", "zstd"),
        ("topk:1.0", "topk:1"),
        ("randomk:0.25|qsgd:0016|zstd:19", "randomk:0.25|qsgd:16|zstd:19"),
    ],
)
def test_names_are_canonical(spec: str, name: str) -> None:
    assert parse_codec(spec).name == name


@pytest.mark.parametrize(
    ("spec", "stochastic"),
    [("topk:0.1|int8|zstd", False), ("randomk:0.1", True), ("topk:0.1|qsgd:4|zstd", True)],
)
def test_a_chain_is_stochastic_if_any_stage_is(spec: str, stochastic: bool) -> None:
    assert parse_codec(spec).stochastic is stochastic


@pytest.mark.parametrize(
    ("items", "spec"),
    [
        ([{"topk": 0.01}, "int8", "zstd"], "topk:0.01|int8|zstd"),
        ([], "float32"),
        ([{"qsgd": 16}, {"zstd": 19}], "qsgd:16|zstd:19"),
        ([{"zstd": None}], "zstd"),
        (["topk:0.01|int8"], "topk:0.01|int8"),
        ("topk:0.01|int8", "topk:0.01|int8"),
    ],
)
def test_codec_spec_turns_the_yaml_list_into_the_canonical_spec(items: Any, spec: str) -> None:
    assert codec_spec(items) == spec


def test_the_yaml_flow_list_of_the_config_parses() -> None:
    items = yaml.safe_load("[topk: 0.01, int8, zstd]")

    assert codec_spec(items) == "topk:0.01|int8|zstd"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"topk": 0.1, "int8": None}], "a name or a one-key mapping"),
        ([3], "a name or a one-key mapping"),
        ([{"topk": 1.5}], r"topk fraction must be in \(0, 1\], got 1.5"),
        (["zstd", {"topk": 0.1}], "zstd must come last"),
    ],
)
def test_codec_spec_refuses_bad_lists(items: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec_spec(items)


def test_the_python_chain_is_the_spec_chain() -> None:
    vec = np.random.default_rng(0).standard_normal(2000).astype(np.float32)

    built = chain(topk(0.01), int8(), zstd())

    parsed = parse_codec("topk:0.01|int8|zstd")
    assert built.name == "topk:0.01|int8|zstd"
    assert built.encode(vec) == parsed.encode(vec)
    assert built.wire_size(2000) == parsed.wire_size(2000)
    assert chain().name == "float32"
    assert chain(randomk(0.5), qsgd(4)).stochastic


def test_the_python_chain_checks_order_and_stages() -> None:
    with pytest.raises(ValueError, match=r"topk:0\.1 must come before int8"):
        chain(int8(), topk(0.1))
    with pytest.raises(TypeError, match="not a chain stage"):
        chain(parse_codec("topk:0.1|int8"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"topk fraction must be in \(0, 1\], got 2"):
        topk(2)


def test_a_registered_stage_joins_the_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STAGES, "half", lambda arg: Float16Codec())

    assert parse_codec("topk:0.5|half").name == "topk:0.5|float16"


def test_get_codec_builds_each_spec_once() -> None:
    codec = core_codec.get_codec("topk:0.01|int8|zstd")

    assert core_codec.get_codec("topk:0.01|int8|zstd") is codec
    assert codec.name == "topk:0.01|int8|zstd"
    with pytest.raises(ValueError, match="unknown codec 'zip'"):
        core_codec.get_codec("zip")
    assert "topk" in core_codec.CODECS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["transport.upload=[zstd, {topk: 0.01}]"], "zstd must come last"),
        (["transport.upload=[{topk: 1.5}]"], r"topk fraction must be in \(0, 1\], got 1.5"),
        (["transport.upload=[int9]"], "unknown codec 'int9'"),
        (["transport.error_feedback=true"], "a float32 upload leaves out nothing"),
        (["transport.error_feedback=true", "transport.upload=[zstd]"], "leaves out nothing"),
        (["transport.download=[{qsgd: 16}]"], "'qsgd:16' is stochastic"),
        (["transport.download=[int8, {topk: 0.1}]"], "topk:0.1 must come before int8"),
    ],
)
def test_a_bad_upload_config_names_the_problem(overrides: list[str], message: str) -> None:
    from fedloom.config import load_config
    from fedloom.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_config_names_the_upload_chain_canonically() -> None:
    from fedloom.config import load_config

    cfg = load_config(None, ["transport.upload=[{topk: 0.01}, int8, zstd]"])

    assert cfg.transport.upload_codec == "topk:0.01|int8|zstd"
    assert load_config(None, ["transport.codec=float16"]).transport.upload_codec == "float16"
    down = load_config(None, ["transport.download=[int8]", "transport.codec=float16"]).transport
    assert (down.download_codec, down.upload_codec) == ("int8", "float16")
