"""The wiring layer: a ``Federation`` (the model's spec and initial params, the strategy, the
clients' factory and population, central evaluation, the data facts of the summary), built
from a ``Config`` by its app kind or from the user's Python objects, for every entry point:
``fedloom run``, ``fedloom.simulate``, ``fedloom server`` and ``fedloom client``."""

from __future__ import annotations

from fedloom.app.federation import Federation
from fedloom.app.ratings import RATINGS
from fedloom.app.registry import AppKind, app_kind, register_app
from fedloom.app.supervised import SUPERVISED

register_app(SUPERVISED)
register_app(RATINGS)

__all__ = ["AppKind", "Federation", "app_kind", "register_app"]
