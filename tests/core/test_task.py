"""Blobs and uploads sparse under a pruning mask."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.core.codec import get_codec
from fedloom.core.params import ParamSpec, content_hash
from fedloom.core.task import Blob, blob_table, gather, scatter

SPEC = ParamSpec(names=("w",), shapes=((2, 3),), dtypes=("float32",))
VEC = np.array([1.5, 0.0, -2.0, 0.0, 0.25, 3.0], np.float32)
SUPPORT = np.array([True, False, True, False, True, True])


def test_a_masked_blob_carries_only_the_values_under_its_mask() -> None:
    mask = Blob.mask_of(SPEC, SUPPORT)
    blob = Blob.encode(SPEC, get_codec("float32"), VEC, mask)

    # four float32 values, and a digest over the mask's digest and the payload
    assert blob.payload == np.array([1.5, -2.0, 0.25, 3.0], "<f4").tobytes()
    assert blob.mask == mask.digest
    assert blob.digest != content_hash(blob.payload)
    np.testing.assert_array_equal(blob.decode(blob_table(mask)), VEC)


def test_a_masked_blob_without_its_mask_is_an_error() -> None:
    mask = Blob.mask_of(SPEC, SUPPORT)
    blob = Blob.encode(SPEC, get_codec("float32"), VEC, mask)

    with pytest.raises(ValueError, match=r"sparse under the mask .* not provided"):
        blob.decode({})


def test_gather_and_scatter_work_part_by_part() -> None:
    two_parts = np.concatenate([VEC, 2 * VEC])

    values = gather(two_parts, SUPPORT)

    assert values.tolist() == [1.5, -2.0, 0.25, 3.0, 3.0, -4.0, 0.5, 6.0]
    np.testing.assert_array_equal(scatter(values, SUPPORT), two_parts)
    rows = gather(np.stack([two_parts, -two_parts]), SUPPORT)
    assert rows.shape == (2, 8) and rows[1].tolist() == (-values).tolist()


def test_a_delta_blob_decodes_to_its_base_plus_the_delta() -> None:
    base = Blob.held(SPEC, np.array([1, 2, 3, 4, 5, 6], np.float32))
    vec = np.array([1.5, 2, 2, 4, 5, 6.25], np.float32)

    delta = Blob.encode(SPEC, get_codec("float32"), vec, base=base)

    assert delta.payload == np.array([0.5, 0, -1, 0, 0, 0.25], "<f4").tobytes()
    assert delta.base == base.digest and delta.digest != content_hash(delta.payload)
    np.testing.assert_array_equal(delta.decode(blob_table(base)), vec)
    with pytest.raises(ValueError, match=r"a delta against the model .* not provided"):
        delta.decode({})


def test_a_delta_under_a_mask_drops_the_base_where_the_mask_prunes() -> None:
    base = Blob.held(SPEC, np.array([1, 2, 3, 4, 5, 6], np.float32))
    mask = Blob.mask_of(SPEC, SUPPORT)  # prunes entries 1 and 3

    delta = Blob.encode(SPEC, get_codec("float32"), VEC, mask, base)

    # the kept entries of VEC - base: 1.5 - 1, -2 - 3, 0.25 - 5, 3 - 6
    assert delta.payload == np.array([0.5, -5, -4.75, -3], "<f4").tobytes()
    np.testing.assert_array_equal(delta.decode(blob_table(base, mask)), VEC)
