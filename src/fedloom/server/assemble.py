"""The coordinator of a run, built once for every entry point: ``make_coordinator`` over the
config's engine (``make_engine``), codecs, pruning, evaluation schedule and simulated client clock.

``fedloom run`` and ``fedloom.simulate`` pass the clients' factory and get the configured engine;
``fedloom server`` passes its remote engine. Either way an option of the ``transport``,
``pruning`` or ``eval`` sections is wired here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedloom.config import Config, EngineConfig
from fedloom.core.codec import get_codec
from fedloom.core.params import ParamSpec
from fedloom.engines import Engine, SequentialEngine
from fedloom.engines.base import ClientFn
from fedloom.engines.virtual_time import VirtualTimeEngine
from fedloom.errors import ConfigError
from fedloom.server.clock import ClientClock, ClockedEngine, ClockedPopulation
from fedloom.server.coordinator import CentralEvaluator, Coordinator, Population, RoundListener
from fedloom.server.pruning import pruning_schedule
from fedloom.strategies import Strategy
from fedloom.strategies.factory import aggregation_channel

__all__ = ["make_coordinator", "make_engine"]


def make_engine(e: EngineConfig, client_fn: ClientFn) -> Engine:
    """The engine ``e.name`` over ``client_fn``. Optional engines are imported only when chosen:
    ``torch.func`` for the vectorized one, Ray (an optional dependency) for the ray one."""
    if e.name == "vectorized":
        from fedloom.engines.vectorized import VectorizedEngine

        return VectorizedEngine(client_fn, max_memory_mb=e.max_memory_mb, max_params=e.max_params)
    if e.name == "ray":
        from fedloom.engines.ray_engine import RayEngine

        return RayEngine(client_fn, address=e.address, num_workers=e.num_workers)
    return SequentialEngine(client_fn)


def make_coordinator(
    cfg: Config,
    *,
    strategy: Strategy,
    spec: ParamSpec,
    init_params: np.ndarray,
    population: Population,
    central_eval: CentralEvaluator | None,
    listeners: Sequence[RoundListener] = (),
    client_fn: ClientFn | None = None,
    engine: Engine | None = None,
    wrap_engine: Callable[[Engine], Engine] | None = None,
) -> Coordinator:
    """A coordinator over the config's engine, codec and evaluation schedule.

    A simulation passes ``client_fn`` and runs on the engine ``cfg.engine`` names; a deployment
    passes its ``engine`` (remote clients, on real time) and no ``client_fn``.

    With ``clients.enabled`` the clients behave as the ``clients`` section says, on a virtual
    clock (``fedloom.server.clock``): a strategy selects among the clients online and runs
    through a ``ClockedEngine`` (an asynchronous one, FedBuff: a ``VirtualTimeEngine``), outside
    ``wrap_engine`` (simulated attackers).

    The engine is built last, after everything that can refuse the config: a Ray engine starts a
    cluster, and only an engine that a built coordinator holds gets closed.
    """
    if (client_fn is None) == (engine is None):
        raise TypeError("make_coordinator takes client_fn (a simulation) or engine, one of them")
    clock: ClientClock | None = None
    if cfg.clients.enabled:
        clock = ClientClock.from_config(
            cfg.clients,
            seed=cfg.seed,
            num_examples=population.num_examples,
            epochs=cfg.client.epochs,
        )
        if clock.varies and cfg.privacy.mechanism in ("central", "client"):
            raise ConfigError(
                f"privacy.mechanism={cfg.privacy.mechanism} accounts for clients sampled uniformly "
                "from all of them; with clients coming and going (clients.mean_online_s or "
                "online intervals in clients.trace) a round samples only those online, which "
                "that analysis does not cover"
            )
        if not strategy.asynchronous:  # an asynchronous one waits for clients in its round
            clock.wait_for_online(strategy.min_fit_clients)
        population = ClockedPopulation(
            population.num_examples, population.has_test_data, clock=clock
        )
    elif engine is None and strategy.asynchronous:
        raise ConfigError(
            f"strategy.name={strategy.name} simulates asynchrony on the virtual clock of simulated "
            "clients: set clients.enabled=true (and their speeds in the clients section); "
            "fedloom server runs it on real time"
        )
    if engine is None:
        assert client_fn is not None  # one of them, checked above
        engine = make_engine(cfg.engine, client_fn)
    coordinator = Coordinator(
        strategy=strategy,
        spec=spec,
        params=init_params.copy(),
        population=population,
        seed=cfg.seed,
        codec=get_codec(cfg.transport.download_codec),
        upload_codec=get_codec(cfg.transport.upload_codec),
        error_feedback=cfg.transport.error_feedback,
        pruning=pruning_schedule(cfg.pruning),
        download_delta=cfg.transport.download_delta,
        held_models=cfg.transport.download_delta_bases,
        central_eval=central_eval,
        eval_every=cfg.eval.every,
        federated_eval=cfg.eval.federated,
        listeners=list(listeners),
        engine=engine,
        channel=aggregation_channel(cfg),
    )
    if wrap_engine is not None:
        coordinator.engine = wrap_engine(coordinator.engine)
    if clock is not None and strategy.asynchronous:
        coordinator.engine = VirtualTimeEngine(coordinator.engine, clock)
    elif clock is not None:
        coordinator.engine = ClockedEngine(coordinator.engine, clock, strategy.min_fit_clients)
    return coordinator
