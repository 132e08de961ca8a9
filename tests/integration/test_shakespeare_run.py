"""A small Shakespeare federation end to end: its test perplexity falls round over round, the
same on both engines. (Three rounds of a 16-unit LSTM stay at the "predict a space" accuracy;
accuracy by round of the README's example is in its table.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedloom.config import load_config
from fedloom.simulation import Simulation

SMALL = [
    "dataset.name=shakespeare",
    "dataset.max_clients=4",
    "dataset.stride=16",
    "partition.kind=natural",
    "model.name=char_lstm",
    "model.hidden=[16]",
    "client.batch_size=16",
    "client.lr=2.0",
    "client.epochs=1",
    "engine.threads=1",
    "rounds=3",
]


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    """engine.threads sets torch's thread count for the process; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("restore_torch_threads")
def test_perplexity_falls_each_round_and_the_engines_agree() -> None:
    histories = {}
    for engine in ("sequential", "vectorized"):
        sim = Simulation(load_config(None, [*SMALL, f"engine.name={engine}"]))
        histories[engine] = sim.coordinator().run(3)
    perplexity = [record["perplexity"] for record in histories["sequential"]]
    assert perplexity[0] > perplexity[1] > perplexity[2]
    for got, want in zip(histories["vectorized"], histories["sequential"], strict=True):
        assert got["accuracy"] == want["accuracy"]
        assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)
