"""Where clients run: sequential today; vectorised, Ray and remote engines share the interface."""

from fedloom.engines.base import ClientFn, Engine, execute_task
from fedloom.engines.sequential import SequentialEngine

__all__ = ["ClientFn", "Engine", "SequentialEngine", "execute_task"]
