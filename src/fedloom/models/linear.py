"""Linear regression and (multinomial) logistic regression: one affine layer.

The loss decides which it is: MSE makes it linear regression, cross-entropy over the outputs makes it
logistic (softmax) regression.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearModel(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # type: ignore[no-any-return]
