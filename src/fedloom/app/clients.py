"""The local ``Client`` of a deployment client process (``fedloom client``), built from the run's
config that the server sends at Join: partition ``i`` of ``n`` of a built-in dataset (its app
kind's client, split exactly as a simulation splits it), the rows of a local CSV file, or the
user's own ``--app module:function``."""

from __future__ import annotations

from fedloom.app.models import dataset_model
from fedloom.app.registry import app_kind
from fedloom.client.base import Client
from fedloom.client.deploy import ClientFactory
from fedloom.client.local import LocalTraining
from fedloom.client.torch_client import dataset_client
from fedloom.config import Config
from fedloom.data import load_dataset
from fedloom.data.federated import LocalArrays
from fedloom.errors import DeploymentError
from fedloom.plugins import call_factory, load_entry_point

__all__ = ["app_factory", "csv_factory", "demo_factory"]


def demo_factory(dataset: str, index: int, count: int) -> ClientFactory:
    """Partition ``index`` of ``count`` of a built-in dataset, split exactly as a simulation of
    the run's config splits it (same seed, partition kind and test split). For ``movielens`` a
    partition is one user (``count`` must be the run's number of users): that user's
    ``FCFClient``, as in ``fedloom run``."""
    if not 0 <= index < count:
        raise DeploymentError(f"--partition {index}/{count}: the index must be in 0..{count - 1}")

    def build(cfg: Config, client_id: int) -> Client:
        if cfg.dataset.name != dataset:
            raise DeploymentError(f"--dataset {dataset} but the run trains on {cfg.dataset.name!r}")
        return app_kind(cfg).client(cfg, index, count)

    return build


def csv_factory(path: str, target: str) -> ClientFactory:
    """A TorchClient on the rows of a local CSV file, with the run's model."""

    def build(cfg: Config, client_id: int) -> Client:
        ds = load_dataset(
            "csv", path=path, target=target, test_fraction=cfg.dataset.test_fraction, seed=cfg.seed
        )
        local = LocalArrays(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
        return dataset_client(
            dataset_model(cfg, ds),
            ds,
            local,
            client_id=client_id,
            seed=cfg.seed,
            training=LocalTraining.from_config(cfg.client),
        )

    return build


def app_factory(entry_point: str) -> ClientFactory:
    """``module:function`` returning the user's own Client; the function may take the run's
    Config as its one argument.

    The module is imported here, before the client joins, so the stages it registers
    (``register_stage``) are among the task kinds the client advertises.
    """
    fn = load_entry_point(entry_point, "--app")

    def build(cfg: Config, client_id: int) -> Client:
        client = call_factory(fn, cfg, "--app", entry_point)
        if not isinstance(client, Client):
            raise DeploymentError(
                f"--app {entry_point} returned {type(client).__name__}, which has no fit and "
                "evaluate methods"
            )
        return client

    return build
