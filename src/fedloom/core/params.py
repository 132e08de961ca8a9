"""Params and ParamSpec: the wire-level form of a model and its flat-vector view.

Params is an ordered ``dict[str, np.ndarray]``. Aggregation, transforms and codecs work on one flat
contiguous vector, because one fused operation over one buffer is much faster than a loop over
tensors; the ``ParamSpec`` maps between the two. Conversion to and from a torch ``state_dict``
happens only at the edge (``fedloom.client``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and dtypes of a model's parameters, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, params: Mapping[str, np.ndarray]) -> ParamSpec:
        """The spec of ``params``, in its iteration order."""
        return cls(
            names=tuple(params),
            shapes=tuple(tuple(int(d) for d in a.shape) for a in params.values()),
            dtypes=tuple(np.asarray(a).dtype.str for a in params.values()),
        )

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @functools.cached_property
    def size(self) -> int:
        """Total number of scalars."""
        return sum(self.sizes)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each tensor in the flat vector."""
        out, acc = [], 0
        for n in self.sizes:
            out.append(acc)
            acc += n
        return tuple(out)

    def support(self, names: Iterable[str]) -> np.ndarray:
        """Booleans over the flat vector: True on the entries of the parameters ``names``.

        Raises ``ValueError`` for a name that is not a parameter of this spec."""
        wanted = set(names)
        unknown = sorted(wanted.difference(self.names))
        if unknown:
            raise ValueError(f"{unknown} are not parameters of the model {list(self.names)}")
        out = np.zeros(self.size, bool)
        for name, off, n in zip(self.names, self.offsets, self.sizes, strict=True):
            if name in wanted:
                out[off : off + n] = True
        return out

    def flatten(
        self, params: Mapping[str, np.ndarray], dtype: np.dtype | type = np.float32
    ) -> np.ndarray:
        """One contiguous vector holding ``params`` in spec order.

        Raises ``ValueError`` naming the first tensor whose name or shape does not match.
        """
        self.check(params)
        out = np.empty(self.size, dtype=dtype)
        for name, off, n in zip(self.names, self.offsets, self.sizes, strict=True):
            out[off : off + n] = np.asarray(params[name]).reshape(-1)
        return out

    def unflatten(self, vec: np.ndarray) -> Params:
        """Params viewing ``vec`` (no copy when the dtypes already match)."""
        if vec.ndim != 1 or vec.shape[0] != self.size:
            raise ValueError(f"expected a flat vector of {self.size} values, got shape {vec.shape}")
        out: Params = {}
        for name, shape, dt, off, n in zip(
            self.names, self.shapes, self.dtypes, self.offsets, self.sizes, strict=True
        ):
            out[name] = vec[off : off + n].reshape(shape).astype(dt, copy=False)
        return out

    def check(self, params: Mapping[str, np.ndarray]) -> None:
        """Raise ``ValueError`` unless ``params`` has exactly this spec's names and shapes."""
        if tuple(params) != self.names:
            missing = [n for n in self.names if n not in params]
            extra = [n for n in params if n not in self.names]
            raise ValueError(
                f"parameter names do not match the model: missing {missing}, unexpected {extra}"
                if missing or extra
                else "parameter names are in a different order than the model's"
            )
        for name, shape in zip(self.names, self.shapes, strict=True):
            got = tuple(np.shape(params[name]))
            if got != shape:
                raise ValueError(f"parameter {name!r} has shape {got}, the model expects {shape}")

    def as_vector(self, update: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """Accept either Params or an already flat vector, and return a float32 flat vector."""
        if isinstance(update, np.ndarray):
            if update.shape != (self.size,):
                raise ValueError(
                    f"update has shape {update.shape}, the model has {self.size} parameters"
                )
            return update.astype(np.float32, copy=False)
        return self.flatten(update)


def content_hash(data: bytes | memoryview | np.ndarray) -> str:
    """SHA-256 hex digest of a payload; params are cached by it."""
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    return hashlib.sha256(buf).hexdigest()
