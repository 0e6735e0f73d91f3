"""The three model roles and their architectures.

- champion: a compact CNN that serves production; fast on one CPU thread.
- b1: a wider CNN that standardises each image first, so brightness and contrast drift do not
  move its input; trained with drift augmentation.
- b2: a different family (an MLP over a pooled, standardised image) trained with a different
  augmentation recipe, so its mistakes are unlikely to coincide with B1's and their agreement
  carries information.

Every model takes float32 (N, 1, H, W) in [0, 1] and returns logits (N, classes).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Role = Literal["champion", "b1", "b2"]
ROLES: tuple[Role, ...] = ("champion", "b1", "b2")


class Standardize(nn.Module):
    """Per-image zero mean, unit variance: removes global brightness and contrast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-3)


class ChampionNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Linear(32 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BranchCNN(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(self.standardize(x)), 1))


class BranchMLP(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.pool = nn.AdaptiveAvgPool2d(8)
        self.mlp = nn.Sequential(
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(self.standardize(x)), 1))


def build_model(role: Role, num_classes: int) -> nn.Module:
    """A freshly initialised model for `role`."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    architectures = {"champion": ChampionNet, "b1": BranchCNN, "b2": BranchMLP}
    if role not in architectures:
        raise ValueError(f"unknown model role {role!r}; expected one of {', '.join(ROLES)}")
    return architectures[role](num_classes)
