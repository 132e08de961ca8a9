"""The character LSTM: nn.LSTM's numbers from both paths, and vmap on the unrolled one."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fedloom.errors import ConfigError
from fedloom.models import LSTM, CharLSTM, build_model


def _weights(lstm: LSTM) -> list[list[torch.Tensor]]:
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return [[getattr(lstm, f"{k}_l{layer}") for k in kinds] for layer in range(len(lstm.hidden))]


def test_both_paths_give_nn_lstm_outputs_from_its_state_dict() -> None:
    torch.manual_seed(0)
    reference = nn.LSTM(8, 16, 2, batch_first=True)
    ours = LSTM(8, [16, 16])
    ours.load_state_dict(reference.state_dict())  # same names and shapes
    x = torch.randn(4, 12, 8)
    want = reference(x)[0]
    torch.testing.assert_close(ours(x), want, rtol=0, atol=0)  # eager: the fused kernel
    torch.testing.assert_close(ours.unrolled(x, _weights(ours)), want, rtol=1e-5, atol=1e-6)


def test_layers_of_different_widths_agree_between_the_paths() -> None:
    torch.manual_seed(1)
    ours = LSTM(8, [16, 4])
    x = torch.randn(3, 7, 8)
    out = ours(x)
    assert out.shape == (3, 7, 4)
    torch.testing.assert_close(ours.unrolled(x, _weights(ours)), out, rtol=1e-5, atol=1e-6)


def test_nn_lstm_does_not_vmap_and_the_unrolled_lstm_does() -> None:
    """The measurement behind the unrolled path (torch 2.13): if torch gains a batching rule for
    aten::lstm, this fails, and the vectorized engine could use the fused kernel."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 8)  # two clients' minibatches

    def outputs(module: nn.Module) -> torch.Tensor:
        params, buffers = stack_module_state([module, module])

        def one(
            p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor
        ) -> torch.Tensor:
            out = functional_call(module, (p, b), (xb,))
            return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]

        return vmap(one)(params, buffers, x)

    reference = nn.LSTM(8, 6, batch_first=True)
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::lstm"):
        outputs(reference)
    ours = LSTM(8, [6])
    ours.load_state_dict(reference.state_dict())
    got = outputs(ours)
    for client in range(2):
        torch.testing.assert_close(got[client], reference(x[client])[0], rtol=1e-5, atol=1e-6)


def test_char_lstm_reads_character_ids_and_leafs_size() -> None:
    model = build_model("char_lstm", (80,), 81, hidden=[256, 256])
    assert isinstance(model, CharLSTM)
    # embedding 81 x 8, LSTM 4*256*(8 + 256 + 2) + 4*256*(256 + 256 + 2), head 256*81 + 81
    assert sum(p.numel() for p in model.parameters()) == 648 + 272_384 + 526_336 + 20_817
    logits = model(torch.zeros(2, 80, dtype=torch.uint8))
    assert logits.shape == (2, 81)
    with pytest.raises(ConfigError, match="char_lstm' needs sequences"):
        build_model("char_lstm", (1, 8, 8), 10)
