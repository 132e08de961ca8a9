"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

The format is described on the MNIST page (LeCun, Cortes and Burges, "The MNIST database of
handwritten digits", http://yann.lecun.com/exdb/mnist/) and used unchanged by Fashion-MNIST (Xiao,
Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", arXiv:1708.07747, 2017).

Layout, all integers big-endian::

    bytes 0-1   zero
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte  3     number of dimensions d
    4 * d bytes the size of each dimension (uint32)
    then        the elements in C order

Files may be gzip-compressed; compression is recognised by its magic bytes, not by the file name.
The reader checks the header against the file length, so a truncated or foreign file fails with a
:class:`~fedloom.errors.DatasetError` that names the file and what was wrong.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.errors import DatasetError

__all__ = ["read_idx", "write_idx"]

_TYPE_CODES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# No IDX file in use has more than a handful of dimensions; a larger count means a foreign file.
_MAX_DIMS = 16


def read_idx(path: str | Path) -> npt.NDArray[Any]:
    """Read an IDX file, gzip-compressed or not, into a native-endian array.

    Parameters
    ----------
    path:
        The file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns
    -------
    A writable array with the shape and element type given by the file's header.

    Raises
    ------
    DatasetError
        If the file is missing, is not IDX, or holds fewer or more bytes than its header says.

    Examples
    --------
    >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    ... # doctest: +SKIP
    >>> images.shape, images.dtype  # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read_stream(stream, path)
            return _read_stream(raw, path)
    except FileNotFoundError:
        raise DatasetError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; EOFError means the compressed stream ends early.
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc


def write_idx(path: str | Path, array: npt.ArrayLike) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    Useful for turning a local image collection into the layout :func:`read_idx` and the MNIST
    loaders expect, and for building small fixtures in tests.
    """
    path = Path(path)
    data = np.asarray(array)
    big_endian = data.dtype.newbyteorder(">")
    codes = {dtype: code for code, dtype in _TYPE_CODES.items()}
    if big_endian not in codes:
        supported = ", ".join(str(dtype.newbyteorder("=")) for dtype in _TYPE_CODES.values())
        raise DatasetError(f"IDX cannot store dtype {data.dtype}; use one of {supported}")
    if not 1 <= data.ndim <= _MAX_DIMS:
        raise DatasetError(f"IDX stores arrays with 1 to {_MAX_DIMS} dimensions, got {data.ndim}")
    header = struct.pack(f">BBBB{data.ndim}I", 0, 0, codes[big_endian], data.ndim, *data.shape)
    payload = header + np.ascontiguousarray(data, dtype=big_endian).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _read_stream(stream: io.BufferedIOBase, path: Path) -> npt.NDArray[Any]:
    magic = stream.read(4)
    if len(magic) < 4:
        raise DatasetError(f"{path} is not an IDX file: it has only {len(magic)} bytes")
    zero, zero2, type_code, ndim = magic
    if zero != 0 or zero2 != 0 or type_code not in _TYPE_CODES or not 1 <= ndim <= _MAX_DIMS:
        raise DatasetError(
            f"{path} is not an IDX file: bad magic number 0x{magic.hex()} "
            f"(expected 0x0000, a type code in {{08, 09, 0b, 0c, 0d, 0e}} and 1 to {_MAX_DIMS} "
            "dimensions); the file may be corrupt or of another format"
        )
    dims_bytes = stream.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DatasetError(f"{path} is truncated: its header promises {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", dims_bytes)
    dtype = _TYPE_CODES[type_code]
    # Reading straight into the output buffer avoids holding a decompressed copy next to it.
    out = np.empty(shape, dtype=dtype)
    expected = out.nbytes
    got = _fill(stream, out.reshape(-1).view(np.uint8).data)
    if got != expected:
        raise DatasetError(
            f"{path} is truncated: header says shape {shape} ({expected} data bytes), "
            f"file holds {got}"
        )
    if stream.read(1):
        raise DatasetError(
            f"{path} is corrupt: it has bytes after the {expected} data bytes its header "
            f"(shape {shape}) describes"
        )
    return out.astype(dtype.newbyteorder("="), copy=False)


def _fill(stream: io.BufferedIOBase, buffer: memoryview) -> int:
    """Read into ``buffer`` until it is full or the stream ends; return the bytes read."""
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:])
        if not count:
            break
        filled += count
    return filled
