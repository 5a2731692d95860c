"""``mnist_lenet``: the MNIST notebook's own LeNet, as an architecture an uploaded checkpoint may target.

The lesson's network (its key names kept, so its checkpoints load as they are)::

    conv: Conv2d(1, 6, 5), ReLU, MaxPool2d(2), Conv2d(6, 16, 5), ReLU, MaxPool2d(2)
    fc:   Linear(256, 120), ReLU, Linear(120, 84), ReLU, Linear(84, 10)

on 28×28 greyscale input. The lesson's preprocessing is ``transforms.ToTensor()`` only (values in
[0, 1], no normalisation), on MNIST's light strokes on a dark background; the lesson explains the
ReLU before the last max-pool, ``conv.4`` (16×8×8).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..families import Architecture
from ..preprocess import LIGHT_ON_DARK, Preprocess

NAME = "mnist_lenet"
INPUT_SIZE = 28
DEFAULT_LAYER = "conv.4"


class MnistLeNet(nn.Module):
    """The lesson's LeNet: ``conv`` (two conv/ReLU/max-pool blocks) then ``fc`` (three linear layers)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(
            nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


def _build(state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    from ..errors import WeightsMismatchError

    head, first = state.get("fc.4.weight"), state.get("conv.0.weight")
    if head is None or first is None:
        keys = ", ".join(list(state)[:5])
        raise WeightsMismatchError(
            f"{source} does not fit {NAME}: it needs the lesson's keys 'conv.0.weight' … 'fc.4.weight' "
            f"(first keys in the file: {keys})."
        )
    if head.ndim != 2 or first.ndim != 4:
        raise WeightsMismatchError(
            f"{source} does not fit {NAME}: fc.4.weight is {tuple(head.shape)} and conv.0.weight "
            f"{tuple(first.shape)}, but they must be 2-D and 4-D."
        )
    return MnistLeNet(num_classes=int(head.shape[0]), in_channels=int(first.shape[1]))


def _preprocess(in_channels: int, input_size: int | None) -> Preprocess:
    size = input_size or INPUT_SIZE
    # ToTensor() only: mean 0 and std 1 leave the [0, 1] values as they are.
    return Preprocess(size, size, (0.0,) * in_channels, (1.0,) * in_channels, in_channels=in_channels,
                      polarity=LIGHT_ON_DARK)


def architecture() -> Architecture:
    """The declaration of the uploadable ``mnist_lenet`` architecture (the MNIST lesson's LeNet)."""
    return Architecture(
        name=NAME, description="The MNIST lesson's LeNet (conv/fc, 28×28, ToTensor only, light on dark)",
        build=_build, preprocess=_preprocess, default_layer=DEFAULT_LAYER, polarity=LIGHT_ON_DARK,
    )
