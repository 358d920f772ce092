"""A small Fashion-MNIST CNN, used only as the evaluator: its penultimate layer is the feature
space of our FID, its predictions give the generators' conditional accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    channels: int = 32
    features: int = 128
    dropout: float = 0.3
    image_channels: int = 1


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Classifier(nn.Module):
    """Input: (B, 1, 28, 28) in [-1, 1]."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.body = nn.Sequential(
            conv_bn(cfg.image_channels, c), conv_bn(c, c), nn.MaxPool2d(2),  # (B, c, 14, 14)
            conv_bn(c, 2 * c), conv_bn(2 * c, 2 * c), nn.MaxPool2d(2),  # (B, 2c, 7, 7)
            nn.Flatten(),
            nn.Linear(2 * c * 7 * 7, cfg.features),
            nn.ReLU(),  # penultimate features (B, features)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.features, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.body(x)))
