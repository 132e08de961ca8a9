"""Server optimisers applied to the aggregated pseudo-gradient."""

from fedloom.optim.server import (
    SERVER_OPTIMIZERS,
    OptState,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
    make_server_optimizer,
)

__all__ = [
    "SERVER_OPTIMIZERS",
    "OptState",
    "ServerAdagrad",
    "ServerAdam",
    "ServerOptimizer",
    "ServerSGD",
    "ServerYogi",
    "make_server_optimizer",
]
