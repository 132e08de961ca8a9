"""The supervised datasets (``fedloom run`` on digits, the tables, the images, shakespeare, a
CSV file): a Config's dataset split into simulated clients (``Simulation``), the server side of a
deployment that trains on it (``dataset_server``: the model and the test split, no clients), and
partition ``i`` of ``n`` as a deployment client (``dataset_client``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedloom.app.evaluation import dataset_evaluator, eval_data_evaluator
from fedloom.app.federation import Federation
from fedloom.app.models import dataset_model, model_name, recorded_config
from fedloom.app.registry import AppKind
from fedloom.attacks import (
    BACKDOOR_TARGET,
    PoisonedEngine,
    malicious_clients,
    poison_data,
    stamp_trigger,
)
from fedloom.client.local import LocalTraining
from fedloom.client.torch_client import TorchClient, dataset_client, evaluate_model, get_params
from fedloom.config import Config
from fedloom.core.params import ParamSpec
from fedloom.data import Dataset
from fedloom.data.federated import ClientData, load_clients, load_config_dataset, local_arrays
from fedloom.engines import Engine
from fedloom.errors import DeploymentError
from fedloom.server.coordinator import CentralEvaluator, Coordinator, Population, RoundListener
from fedloom.strategies import Strategy
from fedloom.strategies.factory import make_strategy

__all__ = ["SUPERVISED", "Simulation", "dataset_client_of", "dataset_facts", "dataset_server"]


def dataset_facts(ds: Dataset) -> dict[str, Any]:
    """What a run trains on, for the summary."""
    return {
        "name": ds.name,
        "task": ds.task,
        "train_examples": len(ds.x_train),
        "test_examples": len(ds.x_test),
    }


def _initial(cfg: Config, ds: Dataset) -> tuple[nn.Module, ParamSpec, np.ndarray]:
    """The model of ``cfg`` for ``ds`` and its initial params, the same in a simulation and on a
    deployment's server: drawn from ``cfg.seed``."""
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    torch.manual_seed(cfg.seed)
    model = dataset_model(cfg, ds)
    init = get_params(model)
    spec = ParamSpec.of(init)
    return model, spec, spec.flatten(init)


class Simulation:
    """Everything a simulated run of a Config needs: its dataset split into clients, the model and
    its initial params, one TorchClient per client, central evaluation, and the federation."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dataset: Dataset
        self.clients: list[ClientData]
        self.dataset, self.clients = load_clients(cfg)
        ds = self.dataset
        self.model_name = model_name(cfg, ds)  # a model that cannot read the data: refused
        self.num_outputs = ds.num_classes if ds.task == "classification" else 1
        self.model, self.spec, self.init_params = _initial(cfg, ds)
        self.eval_model = self.new_model()
        self.training = LocalTraining.from_config(cfg.client)
        attack = cfg.attack
        self.malicious: list[int] = (
            malicious_clients(len(self.clients), attack.fraction, cfg.seed) if attack else []
        )
        self._trigger_value = float(np.max(ds.x_train)) if len(ds.x_train) else 1.0
        self.central_eval: CentralEvaluator = dataset_evaluator(
            self.eval_model, ds, self._backdoor if self._backdoored else None
        )

    def new_model(self) -> nn.Module:
        """A new instance of the run's model (its params are not the initial ones)."""
        return dataset_model(self.cfg, self.dataset)

    def client(self, cid: int) -> TorchClient:
        """Client ``cid``. They share one model instance: each task loads the global params."""
        return self.client_of(cid, self.clients[cid])

    def client_of(self, cid: int, data: ClientData) -> TorchClient:
        """A client with id ``cid`` holding the rows ``data`` (the baselines pool every client's)."""
        local = local_arrays(self.dataset, data)
        attack = self.cfg.attack
        if attack is not None and cid in self.malicious:
            local = poison_data(
                local, attack.kind, self.num_outputs, self._trigger_value, self.cfg.seed
            )
        return dataset_client(
            self.model,
            self.dataset,
            local,
            client_id=cid,
            seed=self.cfg.seed,
            training=self.training,
        )

    @property
    def _backdoored(self) -> bool:
        return self.cfg.attack is not None and self.cfg.attack.kind == "backdoor"

    def _backdoor(self, model: nn.Module) -> dict[str, Any]:
        """The share of triggered test examples of other classes classified as the target."""
        ds = self.dataset
        other = ds.y_test != BACKDOOR_TARGET
        triggered = stamp_trigger(ds.x_test[other], self._trigger_value)
        target = np.full(int(other.sum()), BACKDOOR_TARGET, dtype=ds.y_test.dtype)
        success = evaluate_model(
            model, triggered, target, task=ds.task, num_classes=self.num_outputs
        )["accuracy"]
        return {"backdoor_success": success}

    def population(self) -> Population:
        return Population(
            num_examples={cid: len(c.train) for cid, c in enumerate(self.clients)},
            has_test_data={cid for cid, c in enumerate(self.clients) if len(c.test)},
        )

    def _attacked(self, engine: Engine) -> Engine:
        attack = self.cfg.attack
        if attack is None or not self.malicious:
            return engine
        return PoisonedEngine(engine, self.malicious, attack.kind, attack.scale, self.cfg.seed)

    def federation(self, cfg: Config | None = None) -> Federation:
        """This simulation as a ``Federation`` with a new strategy of ``cfg`` (default: its
        own config; the baselines run it with every client in every round)."""
        cfg = cfg or self.cfg
        facts = {}
        if cfg.attack is not None:
            facts["attack"] = {**cfg.attack.model_dump(), "malicious": self.malicious}
        return Federation(
            cfg=cfg,
            spec=self.spec,
            init_params=self.init_params,
            strategy=make_strategy(cfg),
            population=self.population(),
            client_fn=self.client,
            central_eval=self.central_eval,
            data=dataset_facts(self.dataset),
            wrap_engine=self._attacked,
            recorded=recorded_config(cfg, self.model_name),
            facts=facts,
        )

    def coordinator(self, listeners: list[RoundListener] | None = None) -> Coordinator:
        """The coordinator of a run of this simulation."""
        return self.federation().coordinator(listeners or ())

    def summary(
        self, history: list[dict[str, Any]], wall_seconds: float, out: Path
    ) -> dict[str, Any]:
        """The ``summary.json`` of a run of this simulation: final metrics, the config, data facts."""
        return self.federation().summary(history, wall_seconds, out)


def dataset_server(cfg: Config, eval_data: Path | None, strategy: Strategy) -> Federation:
    """The server side of a deployment training on ``cfg.dataset``: the model with the initial
    params a simulation of ``cfg`` starts from, the strategy, and central evaluation on the
    dataset's test split (or on ``eval_data``). The training rows are not split into clients."""
    ds = load_config_dataset(cfg)
    _, spec, init_params = _initial(cfg, ds)
    name = model_name(cfg, ds)
    if eval_data is not None:
        evaluator, data = eval_data_evaluator(eval_data, dataset_model(cfg, ds))
        source = str(eval_data)
    else:
        evaluator = dataset_evaluator(dataset_model(cfg, ds), ds)
        source, data = f"the {ds.name} test split", dataset_facts(ds)
    central = evaluator if cfg.server.central_eval else None
    return Federation(
        cfg=cfg,
        spec=spec,
        init_params=init_params,
        strategy=strategy,
        population=Population(num_examples={}),
        central_eval=central,
        data=data,
        source=f"{name} from the config",
        recorded=recorded_config(cfg, name),
        eval_source=source if central is not None else "off (server.central_eval=false)",
    )


def dataset_client_of(cfg: Config, index: int, count: int) -> TorchClient:
    """Partition ``index`` of ``count`` of ``cfg.dataset``, split exactly as a simulation of
    ``cfg`` with ``count`` clients splits it (same seed, partition kind and test split)."""
    part = cfg.partition.model_copy(update={"num_clients": count})
    data, clients = load_clients(cfg.model_copy(update={"partition": part}))
    if index >= len(clients):
        raise DeploymentError(f"--partition {index}/{count}: the run has {len(clients)}")
    return dataset_client(
        dataset_model(cfg, data),
        data,
        local_arrays(data, clients[index]),
        client_id=index,
        seed=cfg.seed,
        training=LocalTraining.from_config(cfg.client),
    )


SUPERVISED = AppKind(
    name="supervised",
    datasets=frozenset(),
    simulation=lambda cfg: Simulation(cfg).federation(),
    server=dataset_server,
    client=dataset_client_of,
    strategy=make_strategy,
)
"""Every dataset no other kind claims: a torch model of ``model.name`` trained on its rows."""
