"""Central DP-FedAvg over gRPC with Poisson sampling survives a server crash: the accountant and
the adaptive clip norm continue from the checkpoint, so epsilon after the resume, and the model,
are the uninterrupted simulation's; and the budget stops the resumed run before round 5.

Seed 7 samples clients {1,2,3}, {0,1}, {2}, {0,1,2,3} in rounds 1..4 (q = 0.6); client 2 is slow
in round 3, where it trains alone, so the kill lands inside round 3. Epsilon is 8.22 after round
4 and would be 9.20 after round 5, over the budget of 8.7.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedloom.config import load_config
from fedloom.simulation import Simulation
from fedloom.strategies.dp_fedavg import CLIP_NORM, ROUNDS
from tests.deploy import helpers as h

pytestmark = pytest.mark.deploy

NUM_ROUNDS = 5
CLIENTS = 4
SLOW = 2


def test_dp_server_killed_in_round_3_resumes_with_the_uninterrupted_epsilon(
    tmp_path: Path, certs: Path
) -> None:
    # Prepare: central DP, Poisson sampling, adaptive clipping, a reproducible noise stream
    config = h.write_config(
        tmp_path / "run.yaml",
        rounds=NUM_ROUNDS,
        partition={"num_clients": CLIENTS},
        strategy={"sampling": "poisson", "fraction_fit": 0.6},
        privacy={
            "mechanism": "central",
            "clipping": "adaptive",
            "clip_norm": 0.5,
            "clipped_count_stddev": 1.0,
            "noise_multiplier": 1.0,
            "noise_seed": 3,
            "max_epsilon": 8.7,
        },
        engine={"name": "sequential"},
        eval={"every": 3},  # round 4 is evaluated only because the budget makes it the last
        server={"min_clients": CLIENTS},
    )
    port = h.free_port()
    state, out = tmp_path / "state", tmp_path / "out"
    first_log, second_log = tmp_path / "server-1.log", tmp_path / "server-2.log"
    logs = [tmp_path / f"c{i}.log" for i in range(CLIENTS)]
    procs = [h.server(config, port, certs, state, out, first_log)]
    try:
        h.listening(first_log, procs[0])
        for i in range(CLIENTS):
            delay = 2.5 if i == SLOW else 0.0
            procs.append(h.slow_client(port, i, CLIENTS, certs, logs[i], delay, rounds=[3]))
            # one at a time, so the server numbers client-i as i, like the simulation
            h.wait_for_line(logs[i], f"as client {i} ", 60, procs[-1])
        h.wait_for_line(first_log, f"round 2/{NUM_ROUNDS} |", 90, procs[0])
        h.wait_for_line(logs[SLOW], "fit round 3 started", 30, procs[SLOW + 1])

        # Execute: kill -9 while round 3 trains, then restart on the same state folder
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        assert f"round 3/{NUM_ROUNDS} |" not in h.read(first_log), "the kill came too late"
        procs.append(h.server(config, port, certs, state, out, second_log))
        assert h.wait(procs[-1], 120, second_log) == 0, h.read(second_log)
        codes = [h.wait(p, 30, logs[i]) for i, p in enumerate(procs[1 : CLIENTS + 1])]
    finally:
        h.stop_all(procs)

    second = h.read(second_log)
    assert "resuming run" in second and "after round 2" in second, second
    assert "epsilon" in second  # the progress line reports it
    assert codes == [0] * CLIENTS
    records = h.records(out)
    assert [(r["round"], r["returned"]) for r in records] == [
        (1, 3),
        (2, 2),
        (3, 1),
        (4, 4),
    ]
    assert "stopping before round 5: round 5 would bring epsilon to 9.2047" in second
    assert "accuracy" in records[3] and "accuracy" not in records[1]

    # Assert: epsilon, clip norm and model are the uninterrupted simulation's
    coordinator = Simulation(load_config(config)).coordinator()
    history = coordinator.run(NUM_ROUNDS)
    assert [r["epsilon"] for r in records] == [r["epsilon"] for r in history]
    assert len(history) == 4 and records[3]["accuracy"] == pytest.approx(history[3]["accuracy"])
    assert records[-1]["epsilon"] > records[0]["epsilon"] > 0
    for got_record, sim_record in zip(records, history, strict=True):
        assert got_record["clip_norm"] == pytest.approx(sim_record["clip_norm"], rel=1e-9)
    checkpoint = load_file(str(state / "checkpoints" / f"round-{NUM_ROUNDS - 1:04d}.safetensors"))
    assert float(checkpoint[f"strategy.{ROUNDS}"]) == NUM_ROUNDS - 1
    assert float(checkpoint[f"strategy.{CLIP_NORM}"]) == pytest.approx(
        float(coordinator.strategy_state[CLIP_NORM]), rel=1e-6
    )
    got = load_file(str(out / "model.safetensors"))
    for name, value in coordinator.global_params.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
