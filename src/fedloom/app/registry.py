"""The app kinds: what builds a ``Federation`` from a Config, chosen by ``dataset.name``.

A kind builds the three sides of the same federation: a simulation of every client
(``fedloom run``), a deployment server's side (the model, the strategy and central evaluation,
no clients: ``fedloom server``), and one client of a deployment (``fedloom client --dataset``).
The built-in kinds (``supervised`` for every dataset no other kind claims, ``ratings`` for
movielens) are registered by :mod:`fedloom.app`; ``fedloom.simulate`` builds from the user's
arrays or client factory (:mod:`fedloom.app.arrays`) and ``--model``/``--strategy``/``--app`` from
the user's code (:mod:`fedloom.app.user_code`, :mod:`fedloom.app.clients`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedloom.app.federation import Federation
from fedloom.client.base import Client
from fedloom.config import Config
from fedloom.errors import ConfigError
from fedloom.strategies import Strategy

__all__ = ["AppKind", "app_kind", "register_app"]


@dataclass(frozen=True)
class AppKind:
    """How one kind of application builds its federation from a Config.

    ``datasets``: the ``dataset.name`` values it serves (empty: every one no other kind
    claims). ``simulation(cfg)``: every client, simulated. ``server(cfg, eval_data, strategy)``:
    the server side of a deployment, with ``--eval-data`` if given. ``client(cfg, index, count)``:
    partition ``index`` of ``count`` as a deployment client. ``strategy(cfg)``: the config's
    strategy for this kind. ``own_model``: why ``--model`` does not apply, if it does not.
    """

    name: str
    datasets: frozenset[str]
    simulation: Callable[[Config], Federation]
    server: Callable[[Config, Path | None, Strategy], Federation]
    client: Callable[[Config, int, int], Client]
    strategy: Callable[[Config], Strategy]
    own_model: str | None = None


_KINDS: dict[str, AppKind] = {}


def register_app(kind: AppKind) -> None:
    """Add ``kind``; a dataset claimed twice is refused."""
    for other in _KINDS.values():
        if other.name != kind.name and (shared := other.datasets & kind.datasets):
            raise ValueError(f"datasets {sorted(shared)} are served by app kind {other.name!r}")
    _KINDS[kind.name] = kind


def app_kind(cfg: Config) -> AppKind:
    """The kind that serves ``cfg.dataset.name``."""
    name = cfg.dataset.name
    claimed = [k for k in _KINDS.values() if name in k.datasets]
    fallback = [k for k in _KINDS.values() if not k.datasets]
    if not claimed and not fallback:
        raise ConfigError(f"dataset.name={name}: no app kind serves it")
    return (claimed or fallback)[0]
