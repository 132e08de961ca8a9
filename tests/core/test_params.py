import numpy as np
import pytest

from fedloom.core.codec import Float16Codec, Float32Codec, get_codec
from fedloom.core.params import ParamSpec, content_hash


def _params() -> dict[str, np.ndarray]:
    return {"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "b": np.array([5.0], np.float32)}


def test_spec_flatten_and_unflatten_round_trip() -> None:
    spec = ParamSpec.of(_params())
    assert spec.names == ("w", "b")
    assert spec.shapes == ((2, 2), (1,))
    assert spec.size == 5
    assert spec.offsets == (0, 4)
    vec = spec.flatten(_params())
    np.testing.assert_array_equal(vec, [1, 2, 3, 4, 5])
    back = spec.unflatten(vec)
    assert list(back) == ["w", "b"]
    np.testing.assert_array_equal(back["w"], [[1, 2], [3, 4]])


def test_spec_rejects_wrong_shape_and_names() -> None:
    spec = ParamSpec.of(_params())
    with pytest.raises(ValueError, match="parameter 'w' has shape \\(4,\\), the model expects"):
        spec.flatten({"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="missing \\['b'\\], unexpected \\['c'\\]"):
        spec.flatten({"w": np.zeros((2, 2), np.float32), "c": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="5 parameters"):
        spec.as_vector(np.zeros(6, np.float32))


def test_spec_support_marks_the_entries_of_the_named_parameters() -> None:
    spec = ParamSpec.of(_params())

    np.testing.assert_array_equal(spec.support(["b"]), [False, False, False, False, True])
    np.testing.assert_array_equal(spec.support(["w", "b"]), [True] * 5)
    with pytest.raises(ValueError, match=r"\['c'\] are not parameters of the model \['w', 'b'\]"):
        spec.support(["c"])


def test_codecs_report_exact_sizes_and_round_trip() -> None:
    vec = np.array([0.5, -1.25, 3.0], np.float32)
    assert len(Float32Codec().encode(vec)) == 12
    assert len(Float16Codec().encode(vec)) == 6
    for name in ("float32", "float16"):
        codec = get_codec(name)
        np.testing.assert_array_equal(codec.decode(codec.encode(vec), 3), vec)
    with pytest.raises(ValueError, match="expected 12"):
        Float32Codec().decode(b"\x00" * 11, 3)
    with pytest.raises(ValueError, match="unknown codec"):
        get_codec("zip")


def test_content_hash_depends_on_content_only() -> None:
    a = np.arange(3, dtype=np.float32)
    assert content_hash(a) == content_hash(a.copy().tobytes())
    assert content_hash(a) != content_hash(a + 1)
