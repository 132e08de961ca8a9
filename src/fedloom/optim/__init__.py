"""Server optimisers applied to the aggregated pseudo-gradient."""

from fedloom.optim.server import (
    OptState,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    make_server_optimizer,
)

__all__ = ["OptState", "ServerAdam", "ServerOptimizer", "ServerSGD", "make_server_optimizer"]
