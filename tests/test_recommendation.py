"""MovieLens through `fedloom run`: FCF clients, row-sparse uploads whose bytes are the touched
rows', pooled federated evaluation, and the local-only and centralised baselines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from fedloom.cli.main import main
from fedloom.config import load_config, validate_config
from fedloom.errors import ConfigError
from fedloom.recommendation import RecommendationSimulation, check_config

SMALL = {
    "seed": 0,
    "rounds": 3,
    "dataset": {"name": "movielens", "max_clients": 12},
    "partition": {"kind": "natural"},
    "model": {"name": "mf", "rank": 4},
    "client": {"epochs": 1, "lr": 0.4, "weight_decay": 0.6},
    "engine": {"name": "sequential"},
    "eval": {"federated": True, "every": 3},
}


def test_settings_the_fcf_client_cannot_honour_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.name=movielens trains a matrix factorisation"):
        load_config(None, ["dataset.name=movielens", "model.name=mlp"])
    defaults = validate_config(
        {
            "dataset": {"name": "movielens"},
            "model": {"name": "mf"},
            "partition": {"kind": "iid"},
            "eval": {"federated": False},
            "engine": {"name": "vectorized"},
        }
    )

    with pytest.raises(ConfigError) as err:
        check_config(defaults)

    message = str(err.value)
    assert "set partition.kind: natural" in message
    assert "set eval.federated: true" in message
    assert "set engine.name: sequential (or ray)" in message
    with pytest.raises(ConfigError, match=r"set strategy\.name: fedavg"):
        check_config(validate_config({**SMALL, "strategy": {"name": "fedprox"}}))


def test_fedloom_run_with_baselines_reports_pooled_metrics_and_the_bytes_of_the_touched_rows(
    tmp_path: Path,
) -> None:
    config = tmp_path / "movielens.yaml"
    config.write_text(yaml.safe_dump(SMALL))

    assert main(["run", str(config), "--out", str(tmp_path / "run"), "-q",
                 "--baselines", "local,central"]) == 0  # fmt: skip

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sim = RecommendationSimulation(validate_config(SMALL))
    rank, users = 4, sim.users
    assert summary["dataset"]["task"] == "recommendation" and summary["num_clients"] == 12
    # every user uploads a bitmask over the movies and its rated movies' rows (4 factors + bias)
    mask_bytes = math.ceil(sim.ratings.num_items / 8)
    per_round = sum(mask_bytes + 4 * (rank + 1) * len(u.items_train) for u in users)
    assert [r["bytes_up"] for r in records] == [per_round] * 3
    assert records[0]["compression_ratio_up"] == 12 * 4 * sim.spec.size / per_round
    final = summary["final"]
    # pooled over every held-out rating: the RMSE is the root of the pooled MSE
    assert final["fed_rmse"] == pytest.approx(math.sqrt(final["fed_loss"]))
    assert final["fed_rmse"] != pytest.approx(final["fed_rmse_mean"])  # not a mean over users
    for key in ("fed_hit_rate_at_10", "fed_ndcg_at_10", "fed_mae"):
        assert 0 <= final[key] <= 5
    local, central = summary["baselines"]["local"], summary["baselines"]["central"]
    assert local["clients"] == 12
    # every user every round, one epoch: federated training is centralised full-batch training
    assert central["fed_rmse"] == pytest.approx(final["fed_rmse"], rel=1e-5)
    assert local["fed_rmse"] != pytest.approx(final["fed_rmse"], rel=1e-3)
