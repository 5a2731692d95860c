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

#: How a greyscale picture is drawn: dark strokes on light paper, or light strokes on dark (MNIST).
DARK_ON_LIGHT, LIGHT_ON_DARK = "dark_on_light", "light_on_dark"
#: The choices of ``polarity=``: read it from the picture, or say it.
POLARITIES: tuple[str, ...] = ("auto", DARK_ON_LIGHT, LIGHT_ON_DARK)
#: A border that differs from the picture's mean by less than this (of 255) says nothing.
_POLARITY_MARGIN = 1.0


def read_polarity(image: Image.Image) -> str | None:
    """``"dark_on_light"`` or ``"light_on_dark"`` as the picture shows it, ``None`` if it cannot tell.

    The border is background on a digit picture: its median against the mean of the whole picture
    (strokes pull the mean away from the background) says which way round the picture is drawn.
    """
    import numpy as np

    a = np.asarray(image.convert("L"), dtype=np.float32)
    if a.ndim != 2 or min(a.shape) < 3:
        return None
    b = max(1, round(min(a.shape) / 8))
    border = np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[b:-b, :b].ravel(), a[b:-b, -b:].ravel()])
    diff = float(np.median(border)) - float(a.mean())
    if abs(diff) < _POLARITY_MARGIN:
        return None
    return DARK_ON_LIGHT if diff > 0 else LIGHT_ON_DARK


def check_polarity(polarity: str) -> str:
    """``polarity`` if it is one of :data:`POLARITIES`, else a clear error."""
    if polarity not in POLARITIES:
        raise ExplainError(f"Unknown polarity {polarity!r}: use one of {', '.join(POLARITIES)}.")
    return polarity


@dataclass(frozen=True)
class Preprocess:
    """Geometry and normalisation of one model's input."""

    input_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    in_channels: int = 3
    invert: bool = False  # a fixed flip inside the model's own pipeline (digits_lenet's, after the polarity step)
    #: Greyscale only: the polarity of the pictures the model was trained on (as handed to this
    #: preprocessing). A picture read the other way round is flipped first. ``None``: dark on light.
    polarity: str | None = None

    @property
    def trained_polarity(self) -> str:
        """The polarity this model's pictures are expected in (greyscale models)."""
        return self.polarity or DARK_ON_LIGHT

    def read(self, view: Image.Image, polarity: str = "auto") -> str | None:
        """The polarity ``view`` is taken to have: read from it (``"auto"``) or as given.

        ``None`` for colour models. A picture that does not tell (a blank page) is taken to be
        drawn as the model expects.
        """
        check_polarity(polarity)
        if self.in_channels != 1:
            return None
        if polarity != "auto":
            return polarity
        return read_polarity(view) or self.trained_polarity

    def flips(self, reading: str | None) -> bool:
        """Whether the network sees ``1 - x`` of a picture read as ``reading`` (an odd number of flips)."""
        if self.in_channels != 1:
            return False
        return (reading not in (None, self.trained_polarity)) != bool(self.invert)

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

    def view_box(self, size: tuple[int, int], fit: Fit = "squash") -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``: the part of a ``size = (width, height)`` picture the model view shows.

        The whole picture for ``squash``; for ``crop``, the centre square that
        :meth:`view`'s resize and centre crop keep, in the picture's own pixels (torchvision's
        rounding).
        """
        w0, h0 = int(size[0]), int(size[1])
        if fit == "squash" or w0 <= 0 or h0 <= 0:
            return 0, 0, w0, h0
        short, long = (w0, h0) if w0 <= h0 else (h0, w0)
        new_long = int(self.resize_size * long / short)
        rw, rh = (self.resize_size, new_long) if w0 <= h0 else (new_long, self.resize_size)
        s = self.input_size
        left, top = int(round((rw - s) / 2.0)), int(round((rh - s) / 2.0))
        sx, sy = w0 / rw, h0 / rh
        x0, y0 = max(0, round(left * sx)), max(0, round(top * sy))
        x1, y1 = min(w0, round((left + s) * sx)), min(h0, round((top + s) * sy))
        return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)

    def to_tensor(self, view: Image.Image, polarity: str | None = "auto") -> torch.Tensor:
        """Normalised ``[1, C, H, W]`` float tensor of a model view.

        Greyscale: a picture whose polarity (read from it, or ``polarity`` when given) is not the
        one the model was trained on is flipped (``1 - x``); ``None`` means "as the model expects".
        """
        if self.in_channels == 1:
            grey = view.convert("L")
            t = TF.pil_to_tensor(grey).float().div_(255.0)
            reading = self.read(view, polarity) if polarity is not None else self.trained_polarity
            if self.flips(reading):
                t = 1.0 - t
        else:
            t = TF.pil_to_tensor(view.convert("RGB")).float().div_(255.0)
        t = TF.normalize(t, list(self.mean), list(self.std))
        return t.unsqueeze(0)


def _first(value: int | Sequence[int]) -> int:
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)
