"""IDX reader and writer: hand-written files, round trips, and corrupt files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fedloom.data import read_idx, write_idx
from fedloom.errors import DatasetError

# uint8 (type 0x08), 2 dimensions: shape (2, 3), then the elements 0..5 in C order.
TINY_UINT8 = b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(6))


def test_reads_hand_written_uint8_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny-idx2-ubyte"
    path.write_bytes(TINY_UINT8)

    array = read_idx(path)

    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, [[0, 1, 2], [3, 4, 5]])
    assert array.flags.writeable


def test_reads_gzip_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "tiny-no-gz-suffix"
    path.write_bytes(gzip.compress(TINY_UINT8))

    np.testing.assert_array_equal(read_idx(path), [[0, 1, 2], [3, 4, 5]])


def test_reads_big_endian_int16_as_native(tmp_path: Path) -> None:
    # Type 0x0B is int16; 0xFFFE is -2 and 0x0102 is 258 in big-endian order.
    path = tmp_path / "int16-idx1"
    path.write_bytes(b"\x00\x00\x0b\x01" + struct.pack(">I", 2) + b"\xff\xfe\x01\x02")

    array = read_idx(path)

    assert array.dtype == np.dtype(np.int16)
    assert array.dtype.isnative
    assert array.tolist() == [-2, 258]


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_then_read_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    original: npt.NDArray[np.generic] = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = write_idx(tmp_path / f"data{suffix}", original)

    restored = read_idx(path)

    assert restored.dtype == original.dtype
    np.testing.assert_array_equal(restored, original)


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot store dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number 0x01000801"),
        (b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number 0x00000a01"),
        (b"\x00\x00\x08\x00", "bad magic number 0x00000800"),
        (b"\x00\x00", "only 2 bytes"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "header promises 3 dimensions"),
        (TINY_UINT8[:-2], r"shape \(2, 3\) \(6 data bytes\), file holds 4"),
        (TINY_UINT8 + b"\x00", "bytes after the 6 data bytes"),
    ],
    ids=["nonzero", "unknown-type", "zero-dims", "too-short", "dims-cut", "data-cut", "extra"],
)
def test_corrupt_files_raise_dataset_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "corrupt"
    path.write_bytes(content)

    with pytest.raises(DatasetError, match=message):
        read_idx(path)


def test_truncated_gzip_raises_dataset_error(tmp_path: Path) -> None:
    compressed = gzip.compress(TINY_UINT8 * 50)
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])

    with pytest.raises(DatasetError, match=r"cut\.gz"):
        read_idx(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"IDX file not found: .*nothing-here"):
        read_idx(tmp_path / "nothing-here")
