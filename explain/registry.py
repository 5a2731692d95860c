"""Which models exist and how to load them.

The torchvision list, their preprocessing and their category names all come from torchvision's
own registry (``list_models``, ``get_model``, ``get_model_weights``, ``weights.transforms()``,
``weights.meta``); nothing here is a hand-written model list. Weights download through
torch.hub into ``$TORCH_HOME/hub/checkpoints`` on first use, and only when asked.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torchvision.models import get_model, get_model_weights, list_models as _tv_list_models

from .errors import UnknownModelError, WeightsUnavailableError
from .model import Model
from .preprocess import Preprocess

DEFAULT_MODEL = "efficientnet_lite0"
EMBEDDED = ("efficientnet_lite0", "digits_lenet", "digits_shortcut")

DownloadProgress = Callable[[int, int], None]  # (bytes so far, total bytes or 0 if unknown)


@dataclass(frozen=True)
class ModelInfo:
    """What the model picker shows about one model."""

    name: str
    source: str  # "embedded" or "torchvision"
    cached: bool  # weights on disk already (embedded models always are)
    weights_file: str  # file name in the hub cache ("" for embedded)
    size_mb: float
    description: str


def torchvision_names() -> list[str]:
    """Every ImageNet classifier in torchvision's registry."""
    return sorted(_tv_list_models(module=torchvision.models))


def model_names() -> list[str]:
    """Embedded models first (the default first of all), then torchvision's classifiers."""
    return list(EMBEDDED) + torchvision_names()


def checkpoint_dir() -> str:
    """The torch hub cache folder where downloaded weights live (honours ``TORCH_HOME``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _weights_enum(name: str, weights: str = "default"):
    enum = get_model_weights(name)
    if weights in ("default", "DEFAULT"):
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        raise UnknownModelError(
            f"Model '{name}' has no weights '{weights}'; available: {', '.join(w.name for w in enum)}."
        ) from None


def weights_file(name: str, weights: str = "default") -> str:
    """Full path where torchvision keeps the weights of ``name``."""
    w = _weights_enum(name, weights)
    return os.path.join(checkpoint_dir(), os.path.basename(w.url))


def list_models() -> list[ModelInfo]:
    """Every loadable model with whether its weights are already on disk."""
    infos = [
        ModelInfo("efficientnet_lite0", "embedded", True, "", 18.0, "EfficientNet-Lite0, ImageNet (embedded default)"),
        ModelInfo("digits_lenet", "embedded", True, "", 0.1, "LeNet on handwritten digits (embedded)"),
        ModelInfo("digits_shortcut", "embedded", True, "", 0.1,
                  "LeNet with a planted shortcut: a corner marker decides '3' and '8' (teaching demo)"),
    ]
    for name in torchvision_names():
        w = get_model_weights(name).DEFAULT
        path = os.path.join(checkpoint_dir(), os.path.basename(w.url))
        size = float(w.meta.get("_file_size", 0.0))
        infos.append(ModelInfo(name, "torchvision", os.path.exists(path), os.path.basename(w.url), size, f"{name}, ImageNet ({w.name})"))
    return infos


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | None = "default",
    device: str | torch.device | None = None,
    *,
    progress: DownloadProgress | None = None,
) -> Model:
    """Load a model ready to explain.

    ``weights``: ``"default"`` (the real weights; torchvision models download them on first use),
    a torchvision weights name (``"IMAGENET1K_V1"``), or ``None`` for random initialisation.
    Raises :class:`UnknownModelError` or :class:`WeightsUnavailableError` with what to do.
    """
    key = name.strip()
    if key == "efficientnet_lite0":
        from .zoo import efficientnet_lite0 as lite0
        import timm

        module = lite0.build(pretrained=weights is not None)
        pre = Preprocess.from_timm(timm.data.resolve_data_config({}, model=module))
        return Model(key, module, imagenet_categories(), pre, device=device, source="embedded")
    if key == "digits_lenet":
        return _load_digits(weights, device)
    if key == "digits_shortcut":  # the audit's teaching demo (scripts/train_digits_shortcut.py)
        from .zoo import lenet

        return _load_digits(weights, device, key, lenet.WEIGHTS_PATH.with_name("digits_shortcut.safetensors"))
    if key not in torchvision_names():
        close = [n for n in model_names() if key.lower()[:4] in n][:5]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"Unknown model '{name}'.{hint} See explain.model_names() for all of them.")
    w = _weights_enum(key, weights) if weights is not None else None
    default = get_model_weights(key).DEFAULT
    meta = (w or default)
    if w is not None:
        _ensure_downloaded(key, w, progress)
        module = _build_with_cached(key, w)
    else:
        module = get_model(key, weights=None)
    pre = Preprocess.from_torchvision(meta.transforms())
    return Model(key, module, meta.meta["categories"], pre, device=device, source="torchvision")


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in index order, from torchvision's weights metadata."""
    return list(get_model_weights("resnet50").DEFAULT.meta["categories"])


def _load_digits(weights: str | None, device, name: str = "digits_lenet", path=None) -> Model:
    from .zoo import lenet

    module, categories, cfg = lenet.load_digits_lenet(path or lenet.WEIGHTS_PATH)
    if weights is None:
        module = lenet.LeNet(num_classes=len(categories), in_channels=int(cfg.get("in_channels", 1)))
    pre = Preprocess(
        input_size=int(cfg["input_size"]),
        resize_size=int(cfg["input_size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=torchvision.transforms.InterpolationMode(cfg.get("interpolation", "bilinear")),
        in_channels=int(cfg.get("in_channels", 1)),
        invert=bool(cfg.get("invert", False)),
    )
    return Model(name, module, categories, pre, device=device, source="embedded")


def _unavailable(name: str, w, reason: str) -> WeightsUnavailableError:
    file = os.path.basename(w.url)
    return WeightsUnavailableError(
        f"Could not get the weights of '{name}' ({reason}). Download {w.url} and save it as "
        f"'{file}' in {checkpoint_dir()} (the torch hub cache under TORCH_HOME), then try again."
    )


def _ensure_downloaded(name: str, w, progress: DownloadProgress | None) -> None:
    """Download ``w`` into the hub cache unless it is there; report bytes as they arrive."""
    path = os.path.join(checkpoint_dir(), os.path.basename(w.url))
    if os.path.exists(path):
        return
    os.makedirs(checkpoint_dir(), exist_ok=True)
    total = int(float(w.meta.get("_file_size", 0.0)) * 1024 * 1024)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            # torch.hub's own downloader: writes a .partial file, checks the hash prefix in the
            # name, and moves the file into place only when complete.
            from torch.hub import HASH_REGEX, download_url_to_file

            match = HASH_REGEX.search(os.path.basename(w.url))
            download_url_to_file(w.url, path, match.group(1) if match else None, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            errors.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)
        if progress is not None:
            partial = glob.glob(path + ".*.partial")
            done = os.path.getsize(partial[0]) if partial and os.path.exists(partial[0]) else 0
            progress(done, total)
    if errors:
        raise _unavailable(name, w, f"{type(errors[0]).__name__}: {errors[0]}") from errors[0]
    if progress is not None:
        progress(total, total)


def _build_with_cached(name: str, w) -> torch.nn.Module:
    path = os.path.join(checkpoint_dir(), os.path.basename(w.url))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module = get_model(name, weights=None)
        module.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file, whatever the error type
        # Move the bad file aside so that the next attempt downloads a fresh copy.
        aside = f"{path}.corrupt-{int(time.time())}"
        try:
            os.replace(path, aside)
            moved = f" It was moved to '{aside}' so the next attempt downloads it again."
        except OSError:
            moved = f" Delete '{path}' and try again."
        raise WeightsUnavailableError(
            f"The cached weights file '{path}' for '{name}' is corrupt or does not fit ({type(exc).__name__}).{moved}"
        ) from exc
    return module
