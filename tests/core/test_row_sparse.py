"""Uploads sparse over rows the client chooses: a bitmask over the rows, then those rows' values."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.core.codec import get_codec
from fedloom.core.params import ParamSpec
from fedloom.core.task import (
    FIT,
    Result,
    RowSparse,
    Task,
    Upload,
    decode_row_sparse,
    encode_row_sparse,
    touched_rows,
)
from fedloom.core.validation import decode_update
from fedloom.errors import UpdateRejected

# item factors (5 x 3) and item biases (5,): 20 values, row r is 3 + 1 of them
SPEC = ParamSpec(names=("q", "b"), shapes=((5, 3), (5,)), dtypes=("float32", "float32"))
ROWS = RowSparse.of(SPEC)
TOUCHED = np.array([False, True, False, True, False])
VEC = np.zeros(20, np.float32)
VEC[3:6] = [1.0, 2.0, 3.0]  # q row 1
VEC[9:12] = [4.0, 5.0, 6.0]  # q row 3
VEC[16], VEC[18] = 7.0, 8.0  # b rows 1 and 3
FLOAT32 = get_codec("float32")


def test_the_layout_of_a_model_whose_tensors_share_their_rows() -> None:
    assert (ROWS.rows, ROWS.widths) == (5, (3, 1))
    assert (ROWS.size, ROWS.mask_bytes) == (20, 1)
    expected = [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    assert ROWS.support(TOUCHED).tolist() == [*expected, False, True, False, True, False]
    with pytest.raises(ValueError, match="same number of rows"):
        RowSparse.of(ParamSpec(("q", "w"), ((5, 3), (4,)), ("float32", "float32")))


def test_an_upload_is_the_row_bitmask_then_the_touched_rows_values_only() -> None:
    payload = encode_row_sparse(FLOAT32, VEC, TOUCHED, ROWS)

    # 1 byte of bitmask (rows 1 and 3: bits 1 and 3) + 2 rows x 4 values x 4 bytes
    assert len(payload) == 1 + 2 * 4 * 4 == 33
    assert payload[0] == 0b1010
    values = np.frombuffer(payload[1:], "<f4")
    assert values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    vec, touched = decode_row_sparse(FLOAT32, payload, ROWS)
    np.testing.assert_array_equal(vec, VEC)
    assert touched.tolist() == TOUCHED.tolist() == touched_rows(payload, ROWS).tolist()
    # the most an upload may take: the bitmask and every row
    assert Upload("float32", 20, rows=ROWS).max_bytes() == 1 + 80
    # the values go through the upload codec: float16 halves them
    half = encode_row_sparse(get_codec("float16"), VEC, TOUCHED, ROWS)
    assert len(half) == 1 + 8 * 2
    np.testing.assert_array_equal(decode_row_sparse(get_codec("float16"), half, ROWS)[0], VEC)


def test_an_update_that_changes_an_undeclared_row_is_refused_on_the_client() -> None:
    with pytest.raises(ValueError, match=r"changes rows it does not declare as touched: \[1, 3\]"):
        encode_row_sparse(FLOAT32, VEC, np.array([True, False, False, False, False]), ROWS)


def _result(payload: bytes) -> Result:
    task = Task(FIT, 1, 7, upload=Upload("float32", 20, rows=ROWS))
    return Result(task, num_examples=2, payload=payload)


def test_the_server_refuses_values_that_are_not_what_the_declared_rows_take() -> None:
    payload = encode_row_sparse(FLOAT32, VEC, TOUCHED, ROWS)
    np.testing.assert_array_equal(decode_update(_result(payload)), VEC)

    # oversized: one more value than two rows take
    with pytest.raises(
        UpdateRejected,
        match=r"row-sparse update does not match the task: it declares 2 of 5 rows \(8 values, at "
        r"most 32 bytes in float32\) but carries 36 bytes of values",
    ):
        decode_update(_result(payload + b"\0\0\0\0"))
    # lying: the bitmask declares three rows, the values are those of two
    with pytest.raises(UpdateRejected, match=r"payload has 32 bytes, expected 48 \(float32 x 12\)"):
        decode_update(_result(bytes([0b1011]) + payload[1:]))
    # a bit set beyond the last row
    with pytest.raises(UpdateRejected, match="padding bits"):
        decode_update(_result(bytes([0b101010]) + payload[1:]))
    # over the cap before anything is read: the bitmask and every row
    with pytest.raises(UpdateRejected, match="update is 82 bytes, over the cap of 81"):
        decode_update(_result(bytes(82)))


def test_a_row_sparse_upload_has_the_dense_size_and_no_pruning_mask() -> None:
    with pytest.raises(ValueError, match="has size 20 and no pruning mask"):
        Upload("float32", 8, rows=ROWS)
    with pytest.raises(ValueError, match="has size 20 and no pruning mask"):
        Upload("float32", 20, mask="abc", rows=ROWS)
