"""Where clients run: sequential and vectorized today; Ray and remote engines share the interface.

``VectorizedEngine`` is imported on first use (PEP 562), so ``import fedloom.engines`` does not pay
for ``torch.func``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedloom.engines.base import ClientFn, Engine, execute_task
from fedloom.engines.sequential import SequentialEngine

if TYPE_CHECKING:
    from fedloom.engines.vectorized import VectorizedEngine

__all__ = ["ClientFn", "Engine", "SequentialEngine", "VectorizedEngine", "execute_task"]


def __getattr__(name: str) -> Any:
    if name == "VectorizedEngine":
        from fedloom.engines.vectorized import VectorizedEngine

        return VectorizedEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
