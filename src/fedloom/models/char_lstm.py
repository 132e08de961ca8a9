"""Next-character prediction with a character LSTM, as in LEAF's Shakespeare benchmark.

Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018: an embedding
of 8 dimensions, two LSTM layers of 256 units and a linear layer over the vocabulary, reading 80
characters and predicting the next. The LSTM is Hochreiter and Schmidhuber, "Long Short-Term
Memory", Neural Computation, 1997, in PyTorch's formulation (``torch.nn.LSTM``, forget gate
without peepholes):

    i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

``nn.LSTM`` cannot train in the vectorized engine: its fused ``aten::lstm`` kernel has no ``vmap``
batching rule ("Batching rule not implemented for aten::lstm.input", torch 2.13). :class:`LSTM`
therefore also writes the recurrence with matrix products, step by step, and takes that path when
its inputs or parameters are functorch tensors (inside ``vmap``); eagerly it calls the fused kernel,
about four times faster on a CPU. Its parameters have ``nn.LSTM``'s names and shapes
(``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ...), so a state dict moves
between the two unchanged, and both paths give ``nn.LSTM``'s outputs to float32 rounding (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LSTM", "CharLSTM"]

EMBEDDING_DIM = 8  # LEAF
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _wrapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a functorch wrapper (a ``vmap`` or ``grad`` level is active)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))


class LSTM(nn.Module):
    """A stack of LSTM layers over ``(batch, time, features)`` inputs (``batch_first``), with the
    parameters, initialisation and numbers of ``nn.LSTM(input_size, hidden, len(layers),
    batch_first=True)`` when every layer has the same width, written so that ``vmap`` runs it."""

    def __init__(self, input_size: int, hidden: Sequence[int]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("an LSTM needs at least one layer")
        self.hidden = tuple(hidden)
        width = input_size
        for layer, size in enumerate(self.hidden):
            bound = 1.0 / math.sqrt(size)  # nn.LSTM's uniform(-1/sqrt(h), 1/sqrt(h))
            for name, shape in (
                (f"weight_ih_l{layer}", (4 * size, width)),
                (f"weight_hh_l{layer}", (4 * size, size)),
                (f"bias_ih_l{layer}", (4 * size,)),
                (f"bias_hh_l{layer}", (4 * size,)),
            ):
                self.register_parameter(
                    name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
                )
            width = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden states at every step, ``(batch, time, hidden[-1])``."""
        weights = [
            [getattr(self, f"{kind}_l{layer}") for kind in _KINDS]
            for layer in range(len(self.hidden))
        ]
        if not any(_wrapped(t) for t in (x, *(w for ws in weights for w in ws))):
            return self.fused(x, weights)
        return self.unrolled(x, weights)

    def fused(self, x: torch.Tensor, weights: list[list[torch.Tensor]]) -> torch.Tensor:
        """PyTorch's fused LSTM kernel, layer by layer (layers may differ in width)."""
        out = x
        for size, layer_weights in zip(self.hidden, weights, strict=True):
            zeros = out.new_zeros(1, out.shape[0], size)
            out = torch._VF.lstm(
                out, (zeros, zeros), layer_weights, True, 1, 0.0, self.training, False, True
            )[0]
        return out

    def unrolled(self, x: torch.Tensor, weights: list[list[torch.Tensor]]) -> torch.Tensor:
        """The same recurrence from matrix products, one time step at a time (``vmap`` runs it)."""
        out = x
        for size, (w_ih, w_hh, b_ih, b_hh) in zip(self.hidden, weights, strict=True):
            bias = b_ih + b_hh
            # The input projection of every step at once; only h_{t-1} W_hh runs step by step.
            projected = out @ w_ih.T + bias
            h = out.new_zeros(out.shape[0], size)
            c = out.new_zeros(out.shape[0], size)
            steps = []
            for t in range(out.shape[1]):
                gates = projected[:, t] + h @ w_hh.T
                i, f, g, o = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                steps.append(h)
            out = torch.stack(steps, dim=1)
        return out


class CharLSTM(nn.Module):
    """Character ids ``(batch, time)`` -> logits of the next character ``(batch, vocab)``.

    ``hidden=(256, 256)`` is LEAF's model (about 820,000 parameters for 81 symbols); the default
    ``(64,)`` is a small one that trains in minutes on a 2-core CPU. Inputs may be any integer or
    float dtype holding whole character ids (datasets store them as ``uint8``).
    """

    def __init__(self, vocab_size: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, EMBEDDING_DIM)
        self.lstm = LSTM(EMBEDDING_DIM, hidden)
        self.head = nn.Linear(self.lstm.hidden[-1], vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = self.lstm(self.embed(x.long()))
        return self.head(states[:, -1])  # type: ignore[no-any-return]
