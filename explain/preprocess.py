"""Preprocessing: from a user's picture to the tensor a model takes.

Two steps are kept apart so the dashboard can show *the image as the model saw it*:
:meth:`Preprocess.view` does the geometry (resize, maybe crop) and returns a PIL image;
:meth:`Preprocess.to_tensor` turns that view into a normalised tensor. Every constant comes from
the weights' own transforms (torchvision) or the model's ``pretrained_cfg`` (timm), never from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .errors import ExplainError

Fit = Literal["squash", "crop"]
FITS: tuple[str, ...] = ("squash", "crop")


@dataclass(frozen=True)
class Preprocess:
    """Geometry and normalisation of one model's input."""

    input_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    in_channels: int = 3
    invert: bool = False  # for models trained on light strokes on a dark background

    @classmethod
    def from_torchvision(cls, transforms: object) -> "Preprocess":
        """Read the parameters of a torchvision ``weights.transforms()`` object."""
        crop = _first(getattr(transforms, "crop_size"))
        resize = _first(getattr(transforms, "resize_size"))
        return cls(
            input_size=int(crop),
            resize_size=int(resize),
            mean=tuple(float(v) for v in getattr(transforms, "mean")),
            std=tuple(float(v) for v in getattr(transforms, "std")),
            interpolation=getattr(transforms, "interpolation"),
        )

    @classmethod
    def from_timm(cls, data_config: dict) -> "Preprocess":
        """Read a timm data config (``timm.data.resolve_data_config``)."""
        size = int(data_config["input_size"][-1])
        crop_pct = float(data_config.get("crop_pct") or 1.0)
        return cls(
            input_size=size,
            resize_size=int(math.floor(size / crop_pct)),
            mean=tuple(float(v) for v in data_config["mean"]),
            std=tuple(float(v) for v in data_config["std"]),
            interpolation=InterpolationMode(data_config.get("interpolation", "bilinear")),
        )

    def view(self, image: Image.Image, fit: Fit = "squash") -> Image.Image:
        """The picture as the model sees it: RGB, ``input_size`` square.

        ``squash`` resizes the whole picture (nothing the user uploaded is cut off); ``crop`` is
        the weights' own resize of the short side followed by a centre crop.
        """
        if fit not in FITS:
            raise ExplainError(f"Unknown fit {fit!r}: use one of {', '.join(FITS)}.")
        image = image.convert("RGB")
        size = self.input_size
        if fit == "squash":
            return TF.resize(image, [size, size], interpolation=self.interpolation, antialias=True)
        resized = TF.resize(image, self.resize_size, interpolation=self.interpolation, antialias=True)
        return TF.center_crop(resized, [size, size])

    def to_tensor(self, view: Image.Image) -> torch.Tensor:
        """Normalised ``[1, C, H, W]`` float tensor of a model view."""
        if self.in_channels == 1:
            grey = view.convert("L")
            t = TF.pil_to_tensor(grey).float().div_(255.0)
            if self.invert:
                t = 1.0 - t
        else:
            t = TF.pil_to_tensor(view.convert("RGB")).float().div_(255.0)
        t = TF.normalize(t, list(self.mean), list(self.std))
        return t.unsqueeze(0)


def _first(value: int | Sequence[int]) -> int:
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)
