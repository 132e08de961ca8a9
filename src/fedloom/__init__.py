"""fedloom: federated learning on PyTorch.

``fedloom.simulate`` runs a federated simulation of your own model and data (see
``fedloom.api``). It is imported on first use (PEP 562), so ``import fedloom`` stays cheap: the
command line, a deployment's configs and ``fedloom --version`` do not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedloom.api import simulate

__all__ = ["__version__", "simulate"]


def __getattr__(name: str) -> Any:
    if name == "simulate":
        from fedloom.api import simulate

        return simulate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
