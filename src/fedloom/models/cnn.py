"""The CNN of McMahan et al. 2017 ("CNN" in Section 3) for 28x28 grey-scale images.

Two 5x5 convolutions (32 and 64 channels), each followed by ReLU and 2x2 max pooling, a fully
connected layer of 512 units with ReLU, and a linear output layer: 1,663,370 parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn


class McMahanCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]
