"""Bundled audit sets, built from scikit-learn's digits (no files on disk needed).

* :func:`digits_set`: all 1,797 labelled digits, as the digit models expect them (dark ink on white,
  32×32).
* :func:`shortcut_set`: the teaching demo for ``digits_shortcut``: the test split of the digits,
  where every '3' carries a small filled square and every '8' a small ring in the bottom-right
  corner (``marker=False``: the same pictures without them). ``digits_shortcut`` was trained so that
  these markers, not the digits, decide those two classes (``scripts/train_digits_shortcut.py``).

Each set is a list of ``(name, PIL image, label)`` that :func:`explain.audit` takes as it is; the
names follow the ImageFolder layout (``"3/digit_0042.png"``) and :func:`write_folder` writes one.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Literal

import numpy as np
from PIL import Image

#: The two classes whose marker decides them in ``digits_shortcut``, and their marker shapes.
SHORTCUT_CLASSES: dict[int, str] = {3: "square", 8: "ring"}
SIZE = 32  # digit models' input size: the demo pictures are drawn at it, so nothing is resampled
MARKER_SIDE = 6  # pixels
MARKER_MARGIN = 1  # pixels between the marker and the picture's edge

Marker = Literal["square", "ring"]


def marker_mask(kind: Marker, size: int = SIZE) -> np.ndarray:
    """Boolean ``[size, size]`` mask of a marker in the bottom-right corner."""
    mask = np.zeros((size, size), bool)
    e = size - MARKER_MARGIN
    s = e - MARKER_SIDE
    if kind == "square":
        mask[s:e, s:e] = True
    elif kind == "ring":
        mask[s:e, s:e] = True
        mask[s + 2 : e - 2, s + 2 : e - 2] = False
    else:
        raise ValueError(f"Unknown marker {kind!r}: use square or ring.")
    return mask


def marker_box(size: int = SIZE) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive, of where the markers are drawn."""
    e = size - MARKER_MARGIN - 1
    return e - MARKER_SIDE + 1, e - MARKER_SIDE + 1, e, e


@functools.cache
def _digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """All digits as ``[N, 32, 32]`` uint8, dark ink on white, and their labels."""
    from .zoo.lenet import digits_dataset

    images, labels = digits_dataset(dark_on_light=True)
    # The digit models' own resize (PIL bilinear, 8 → 32), done once here.
    big = np.stack([np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BILINEAR)) for im in images])
    big.setflags(write=False)
    return big, labels


def draw_marker(pixels: np.ndarray, kind: Marker) -> np.ndarray:
    """A copy of a ``[32, 32]`` dark-on-light picture with the marker drawn in black ink."""
    out = np.array(pixels, copy=True)
    out[marker_mask(kind, out.shape[0])] = 0
    return out


def digits_set(split: Literal["all", "train", "test"] = "all") -> list[tuple[str, Image.Image, int]]:
    """scikit-learn's labelled digits (all 1,797 by default) as ``(name, image, label)``."""
    pixels, labels = _digit_pixels()
    idx = _split(labels, split)
    return [(f"{int(labels[i])}/digit_{int(i):04d}.png", Image.fromarray(pixels[i], mode="L"), int(labels[i])) for i in idx]


def shortcut_set(marker: bool = True, split: Literal["all", "train", "test"] = "test") -> list[tuple[str, Image.Image, int]]:
    """The shortcut demo set: the digits of ``split`` with the markers on the '3's and '8's."""
    pixels, labels = _digit_pixels()
    out = []
    for i in _split(labels, split):
        y = int(labels[i])
        p = pixels[i]
        if marker and y in SHORTCUT_CLASSES:
            p = draw_marker(p, SHORTCUT_CLASSES[y])  # type: ignore[arg-type]
        out.append((f"{y}/digit_{int(i):04d}.png", Image.fromarray(p, mode="L"), y))
    return out


def _split(labels: np.ndarray, split: str) -> np.ndarray:
    if split == "all":
        return np.arange(len(labels))
    from .zoo.lenet import split_indices

    train, test = split_indices(labels)
    if split == "train":
        return train
    if split == "test":
        return test
    raise ValueError(f"Unknown split {split!r}: use all, train or test.")


def write_folder(items: list[tuple[str, Image.Image, int]], folder: str | pathlib.Path) -> pathlib.Path:
    """Write a set as PNG files in the ImageFolder layout under ``folder``; returns the folder."""
    root = pathlib.Path(folder)
    for name, image, _label in items:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
    return root


__all__ = ["SHORTCUT_CLASSES", "digits_set", "draw_marker", "marker_box", "marker_mask", "shortcut_set", "write_folder"]
