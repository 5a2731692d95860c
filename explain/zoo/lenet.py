"""``digits_lenet``: a small LeNet-style CNN trained on scikit-learn's handwritten digits.

The network is built for class activation maps: three conv/ReLU blocks keep an 8×8 feature map
(at the 32×32 input), then global average pooling and ONE linear layer, so plain CAM is exact on
``features`` (the last ReLU) and Grad-CAM & co. work on every block.

Preprocessing of a user's picture (what the engine must do; :func:`digits_to_tensor` does it):

1. if the picture has transparency, paste it on a white background;
2. convert it to greyscale (PIL mode ``"L"``);
3. resize it to 32×32, bilinear (PIL's bilinear, which antialiases when shrinking) — the whole
   picture, no crop;
4. scale to ``[0, 1]`` (divide by 255);
5. if ``preprocess["invert"]`` (true for the shipped weights): ``x = 1 - x``, i.e. ``255 - x``.
   The scikit-learn digits are light strokes on a dark background, whereas users' pictures are
   dark ink on white paper; the model was trained on the digits rendered dark-on-light and sent
   through this same inversion, so it expects dark-on-light pictures;
6. normalise with ``preprocess["mean"]`` / ``preprocess["std"]`` (computed on the training split
   and stored in the weights file's metadata).

This is the same arithmetic as ``explain.preprocess.Preprocess(in_channels=1, invert=True)``
(squash fit): resizing before or after the greyscale conversion and inverting before or after
the resize differ by at most rounding of 8-bit values (not at all for greyscale pictures).

The training script ``scripts/train_digits_lenet.py`` sends the training images through
:func:`digits_to_tensor` itself, so training and inference share one code path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..families import GREY_SAMPLE, Architecture, Built, ModelSpec
from ..preprocess import Preprocess
from .checks import check_state_dict

DIGITS_INPUT_SIZE = 32
DIGITS_NUM_CLASSES = 10
WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "weights" / "digits_lenet.safetensors"
# Key of the safetensors metadata header entry that holds our JSON metadata.
METADATA_KEY = "cam_explorer"
# Fixed split of scikit-learn's digits shared by the training script and the tests.
SPLIT_TEST_SIZE = 0.2
SPLIT_RANDOM_STATE = 0

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class LeNet(nn.Module):
    """LeNet-style CNN with a CAM-friendly head (global average pooling + one linear layer).

    Shapes at the 32×32 input: ``features.0`` conv 5×5 → 16×32×32, ``features.2`` max-pool →
    16×16, ``features.3`` conv 5×5 → 32×16×16, ``features.5`` max-pool → 8×8, ``features.6`` conv
    3×3 → 64×8×8, ``features.7`` ReLU (the CAM layer), ``pool`` → 64×1×1, ``flatten`` → 64,
    ``fc`` → ``num_classes``. Every module is called once per forward; no ReLU is in-place or
    shared.
    """

    def __init__(self, num_classes: int = DIGITS_NUM_CLASSES, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


# --------------------------------------------------------------------------- preprocessing


def _to_grey(img: Image.Image) -> Image.Image:
    """Greyscale ``"L"`` image; transparent parts become white paper."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # High-bit-depth greyscale: rescale to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        arr = np.zeros_like(arr) if hi <= 0 else arr / hi * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L")


def _resized_grey(img: Image.Image, preprocess: dict) -> Image.Image:
    size = int(preprocess.get("input_size", DIGITS_INPUT_SIZE))
    resample = _INTERPOLATIONS[str(preprocess.get("interpolation", "bilinear"))]
    grey = _to_grey(img)
    if grey.size != (size, size):
        grey = grey.resize((size, size), resample=resample)
    return grey


def digits_to_tensor(img: Image.Image, preprocess: dict) -> torch.Tensor:
    """The ``[1, 1, 32, 32]`` float32 input of ``digits_lenet`` for a picture.

    Pipeline (see the module docstring): white behind transparency, greyscale ``"L"``, resize to
    ``input_size`` square with ``interpolation`` (bilinear), scale to ``[0, 1]``, invert
    (``1 - x``) if ``preprocess["invert"]``, normalise with ``mean`` / ``std``.
    """
    grey = _resized_grey(img, preprocess)
    x = torch.from_numpy(np.asarray(grey, dtype=np.float32).copy()).div_(255.0)
    if preprocess.get("invert", False):
        x = 1.0 - x
    mean = float(preprocess["mean"][0])
    std = float(preprocess["std"][0])
    x = (x - mean) / std
    return x.reshape(1, 1, *x.shape).to(torch.float32)


def digits_view(img: Image.Image, preprocess: dict) -> Image.Image:
    """The picture as the model saw it: greyscale, resized to 32×32, returned as RGB.

    It is NOT inverted (nor normalised), so it looks like the user's own picture (dark ink on
    white) and a heat map can be laid over it; pixel for pixel it is the image that
    :func:`digits_to_tensor` inverts and normalises.
    """
    return _resized_grey(img, preprocess).convert("RGB")


# --------------------------------------------------------------------------- data set


def digits_dataset(*, dark_on_light: bool = True) -> tuple[list[Image.Image], np.ndarray]:
    """All 1797 scikit-learn digits as 8×8 ``"L"`` PIL images, and their labels (int64).

    Values 0..16 become 0..255 (``round(v * 255 / 16)``). With ``dark_on_light`` (the default,
    as the model expects) they are drawn as dark ink on white paper (``255 - x``), like a user's
    picture, so they go through :func:`digits_to_tensor` exactly as user pictures do.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = np.rint(data.images.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    if dark_on_light:
        grey = 255 - grey
    images = [Image.fromarray(a, mode="L") for a in grey]
    return images, np.asarray(data.target, dtype=np.int64)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices: the fixed 80/20 stratified split (``random_state=0``)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=SPLIT_TEST_SIZE, random_state=SPLIT_RANDOM_STATE, stratify=labels)
    return np.sort(train), np.sort(test)


# --------------------------------------------------------------------------- loading


def read_digits_metadata(path: str | Path = WEIGHTS_PATH) -> dict[str, Any]:
    """The JSON metadata stored in the weights file's safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if METADATA_KEY not in header:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata; re-run scripts/train_digits_lenet.py")
    return json.loads(header[METADATA_KEY])


def load_digits_lenet(path: str | Path = WEIGHTS_PATH) -> tuple[nn.Module, list[str], dict]:
    """The trained ``digits_lenet`` in eval mode, its categories and its preprocessing.

    Returns ``(module, categories, preprocess)``: ``categories`` is ``["0", ..., "9"]`` and
    ``preprocess`` is ``{"input_size": 32, "mean": [m], "std": [s], "in_channels": 1,
    "interpolation": "bilinear", "invert": True}`` (use it with :func:`digits_to_tensor` /
    :func:`digits_view`). Raises ``ValueError`` if the file does not fit the architecture.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_digits_metadata(path)
    categories = [str(c) for c in meta["categories"]]
    in_channels = int(meta.get("in_channels", 1))
    module = LeNet(num_classes=len(categories), in_channels=in_channels)
    state = load_file(str(path))
    check_state_dict(module, state, source=path.name)
    module.load_state_dict(state)
    module.eval()
    preprocess = {
        "input_size": int(meta["input_size"]),
        "mean": [float(v) for v in meta["mean"]],
        "std": [float(v) for v in meta["std"]],
        "in_channels": in_channels,
        "interpolation": str(meta.get("interpolation", "bilinear")),
        "invert": bool(meta["invert"]),
    }
    return module, categories, preprocess


# --------------------------------------------------------------------------- declarations


def _preprocess_from(cfg: dict) -> Preprocess:
    from torchvision.transforms import InterpolationMode

    return Preprocess(
        input_size=int(cfg["input_size"]),
        resize_size=int(cfg["input_size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=InterpolationMode(cfg.get("interpolation", "bilinear")),
        in_channels=int(cfg.get("in_channels", 1)),
        invert=bool(cfg.get("invert", False)),
        # The network was trained on dark-on-light renderings sent through the fixed inversion.
        polarity=str(cfg.get("polarity", "dark_on_light")),
    )


SHORTCUT_WEIGHTS_PATH = WEIGHTS_PATH.with_name("digits_shortcut.safetensors")


def _digits_loader(path: Path):
    def load(weights: str | None, _progress: object = None) -> Built:
        module, categories, cfg = load_digits_lenet(path)
        if weights is None:
            module = LeNet(num_classes=len(categories), in_channels=int(cfg.get("in_channels", 1)))
        return Built(module, categories, _preprocess_from(cfg))

    return load


def digits_spec() -> ModelSpec:
    """The declaration of ``digits_lenet`` (embedded)."""
    return ModelSpec(
        name="digits_lenet", source="embedded", size_mb=0.1, load=_digits_loader(WEIGHTS_PATH),
        default_sample=GREY_SAMPLE, description="LeNet on handwritten digits (embedded)",
    )


def shortcut_spec() -> ModelSpec:
    """The declaration of ``digits_shortcut``: the audit's teaching demo of a model that is right for
    the wrong reason (``scripts/train_digits_shortcut.py``)."""
    return ModelSpec(
        name="digits_shortcut", source="embedded", size_mb=0.1, load=_digits_loader(SHORTCUT_WEIGHTS_PATH),
        default_sample=GREY_SAMPLE,
        description="LeNet with a planted shortcut: a corner marker decides '3' and '8' (teaching demo)",
    )


def _build_for(state, source: str) -> nn.Module:
    from ..errors import WeightsMismatchError

    fc = state.get("fc.weight")
    conv = state.get("features.0.weight")
    if fc is None or conv is None:
        raise WeightsMismatchError(f"{source} does not fit LeNet: it needs 'fc.weight' and convolution weights.")
    if fc.ndim != 2 or conv.ndim != 4:
        raise WeightsMismatchError(
            f"{source} does not fit LeNet: fc.weight is {tuple(fc.shape)} and the first convolution's weight "
            f"{tuple(conv.shape)}, but they must be 2-D and 4-D."
        )
    return LeNet(num_classes=int(fc.shape[0]), in_channels=int(conv.shape[1]))


def _upload_preprocess(in_channels: int, input_size: int | None) -> Preprocess:
    size = input_size or 32
    return Preprocess(size, size, (0.5,) * in_channels, (0.5,) * in_channels, in_channels=in_channels)


def architecture() -> Architecture:
    """The declaration of the uploadable ``lenet`` architecture (this module's :class:`LeNet`)."""
    return Architecture(
        name="lenet", description="LeNet (CAM Explorer's own, as in digits_lenet)", build=_build_for,
        preprocess=_upload_preprocess,
    )
