"""Local training written once: the optimiser steps equal torch.optim's, for one client's tensors
and for a stacked cohort, and hooks are chosen by name from a fixed registry."""

from __future__ import annotations

import pytest
import torch

from fedloom.client.local import LocalHooks, LocalTraining, hooks_for, make_local_optimizer
from fedloom.errors import ConfigError


@pytest.mark.parametrize(
    "training",
    [
        LocalTraining(lr=0.1, momentum=0.9, weight_decay=0.01),
        LocalTraining(lr=0.01, optimizer="adam", weight_decay=0.01),
    ],
)
def test_one_clients_steps_and_a_cohorts_rows_equal_torch_optim(training: LocalTraining) -> None:
    torch.manual_seed(0)
    start = torch.randn(3, 4)
    grads = [torch.randn(3, 4) for _ in range(3)]
    ref = start.clone().requires_grad_()
    opt = (
        torch.optim.SGD([ref], lr=training.lr, momentum=training.momentum, weight_decay=0.01)
        if training.optimizer == "sgd"
        else torch.optim.Adam([ref], lr=training.lr, weight_decay=0.01)
    )
    one = start.clone()
    cohort = torch.stack([start, 2 * start])  # row 0 is the same client
    mine = make_local_optimizer(training, [one])
    stacked = make_local_optimizer(training, [cohort])

    for t, g in enumerate(grads):
        ref.grad = g.clone()
        opt.step()
        mine.step([one], [g.clone()], t)
        stacked.step([cohort], [torch.stack([g, g])], t)

    torch.testing.assert_close(one, ref.detach())
    torch.testing.assert_close(cohort[0], ref.detach())


def test_hooks_are_chosen_by_name_from_the_registry() -> None:
    assert type(hooks_for({}, LocalTraining())) is LocalHooks
    assert hooks_for({"local": {"name": "fedprox", "proximal_mu": 0.3}}, LocalTraining()).name == (
        "fedprox"
    )
    with pytest.raises(ConfigError, match=r"unknown local training 'os\.system'"):
        hooks_for({"local": {"name": "os.system"}}, LocalTraining())
    with pytest.raises(ConfigError, match="must be a mapping with a 'name'"):
        hooks_for({"local": "fedprox"}, LocalTraining())
