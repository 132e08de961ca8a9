"""``fedloom run --baselines local,central``: local-only and centralised training beside the
federated run, with the same budget, in summary.json."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fedloom.baselines import average_metrics, parse_baselines, pooled, run_with_baselines
from fedloom.cli.main import main
from fedloom.config import load_config
from fedloom.data.federated import ClientData
from fedloom.errors import ConfigError

PIMA = ["dataset.name=pima", "model.name=logistic", "engine.name=sequential"]


def test_parse_baselines_refuses_unknown_kinds() -> None:
    assert parse_baselines("central, local,central") == ["central", "local"]
    with pytest.raises(ConfigError, match="local, central"):
        parse_baselines("local,global")


def test_pooled_holds_every_clients_rows() -> None:
    a = ClientData(np.array([4, 0]), np.array([2]))
    b = ClientData(np.array([1]), np.array([3, 5]))
    both = pooled([a, b])
    assert both.train.tolist() == [0, 1, 4] and both.test.tolist() == [2, 3, 5]


def test_average_metrics_skips_undefined_values() -> None:
    finals: list[dict[str, object]] = [
        {"auc": 0.5, "accuracy": 1.0, "f1": [1.0]},
        {"auc": math.nan, "accuracy": 0.5},
    ]
    assert average_metrics(finals) == {"auc": 0.5, "accuracy": 0.75}


def test_with_one_client_all_three_modes_are_the_same_training(tmp_path: Path) -> None:
    cfg = load_config(None, [*PIMA, "rounds=2", "partition.num_clients=1"])
    summary = run_with_baselines(cfg, tmp_path, ["local", "central"], quiet=True)
    local, central = summary["baselines"]["local"], summary["baselines"]["central"]
    assert local["clients"] == 1
    for key in ("loss", "auc", "pr_auc", "f1_at_threshold"):
        assert local[key] == central[key] == summary["final"][key]
    assert list(summary)[list(summary).index("final") + 1] == "baselines"


def test_cli_writes_baselines_beside_final(tmp_path: Path) -> None:
    sets = [f"--set={item}" for item in [*PIMA, "rounds=3", "partition.num_clients=3"]]
    assert main(["run", *sets, "--baselines", "local,central", "--out", str(tmp_path), "-q"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    local, central = summary["baselines"]["local"], summary["baselines"]["central"]
    assert local["clients"] == 3
    assert {"auc", "pr_auc", "f1_at_threshold", "seconds"} <= set(local) & set(central)
    assert local["auc"] != summary["final"]["auc"] != central["auc"]


def test_the_readme_python_example_prints_the_stated_aucs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Applications: local only") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    stated = re.findall(r"`(\w[\w ]+): AUC (0\.\d+), PR-AUC (0\.\d+)`", section)
    assert len(stated) == 3
    (tmp_path / "examples").symlink_to(root / "examples")
    monkeypatch.chdir(tmp_path)  # the example writes runs/pima here
    out = io.StringIO()

    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), "README.md", "exec"), {"__name__": "readme_example"})

    printed = out.getvalue().splitlines()
    assert printed == [f"{mode}: AUC {auc}, PR-AUC {pr}" for mode, auc, pr in stated]
