"""Which models exist and how to load them.

The torchvision list, their preprocessing and their category names all come from torchvision's
own registry (``list_models``, ``get_model``, ``get_model_weights``, ``weights.transforms()``,
``weights.meta``); nothing here is a hand-written model list. Weights download through
torch.hub into ``$TORCH_HOME/hub/checkpoints`` on first use, and only when asked.
"""

from __future__ import annotations

import functools
import glob
import os
import threading
import time
from dataclasses import dataclass

import torch
import torchvision
from torchvision.models import get_model, get_model_weights, list_models as _tv_list_models

from . import zoo
from .errors import UnknownModelError, WeightsUnavailableError
from .families import Built, DownloadProgress, ModelSpec, declared_model, declared_models, imagenet_categories
from .model import Model
from .preprocess import Preprocess

__all__ = [
    "DEFAULT_MODEL", "ModelInfo", "checkpoint_dir", "download_weights", "get_spec", "imagenet_categories", "list_models",
    "load_model", "model_names", "torchvision_names", "weights_file",
]

DEFAULT_MODEL = "efficientnet_lite0"


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
    return list(_torchvision_names())


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    return tuple(sorted(_tv_list_models(module=torchvision.models)))


def _declared() -> list[ModelSpec]:
    zoo.declare()
    return declared_models()


def model_names() -> list[str]:
    """Declared models first (the embedded default first of all), then torchvision's classifiers."""
    return [s.name for s in _declared()] + torchvision_names()


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
    return _hub_path(os.path.basename(w.url))


def _hub_path(file: str) -> str:
    return os.path.join(checkpoint_dir(), file)


@functools.lru_cache(maxsize=None)
def _torchvision_spec(name: str) -> ModelSpec:
    """The spec of a torchvision classifier, read from torchvision's own registry and weights."""
    default = get_model_weights(name).DEFAULT

    def load(weights: str | None, progress: DownloadProgress | None) -> Built:
        w = _weights_enum(name, weights) if weights is not None else None
        if w is not None:
            _ensure_downloaded(name, w, progress)
            module = _build_with_cached(name, w)
        else:
            module = get_model(name, weights=None)
        meta = w or default
        return Built(module, list(meta.meta["categories"]), Preprocess.from_torchvision(meta.transforms()))

    return ModelSpec(
        name=name, source="torchvision", load=load, description=f"{name}, ImageNet ({default.name})",
        size_mb=float(default.meta.get("_file_size", 0.0)), weights_file=os.path.basename(default.url),
        cached=lambda: os.path.exists(_hub_path(os.path.basename(default.url))),
    )


def get_spec(name: str) -> ModelSpec:
    """The declaration of model ``name`` (declared models, then torchvision's classifiers)."""
    key = name.strip()
    zoo.declare()
    spec = declared_model(key)
    if spec is not None:
        return spec
    if key in _torchvision_names():
        return _torchvision_spec(key)
    close = [n for n in model_names() if key.lower()[:4] in n][:5]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"Unknown model '{name}'.{hint} See explain.model_names() for all of them.")


def list_models() -> list[ModelInfo]:
    """Every loadable model with whether its weights are already on disk."""
    specs = _declared() + [_torchvision_spec(n) for n in _torchvision_names()]
    on_disk = set(os.listdir(checkpoint_dir())) if os.path.isdir(checkpoint_dir()) else set()  # one listing, not 80 stats

    def cached(s: ModelSpec) -> bool:
        return s.weights_file in on_disk if s.weights_file else s.cached()

    return [ModelInfo(s.name, s.source, cached(s), s.weights_file, s.size_mb, s.description) for s in specs]


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
    spec = get_spec(name)
    built = spec.load(weights, progress)
    return Model(spec.name, built.module, built.categories, built.preprocess, device=device, source=spec.source,
                 default_sample=spec.default_sample, default_layer=spec.default_layer)


def _unavailable(name: str, w, reason: str) -> WeightsUnavailableError:
    file = os.path.basename(w.url)
    return WeightsUnavailableError(
        f"Could not get the weights of '{name}' ({reason}). Download {w.url} and save it as "
        f"'{file}' in {checkpoint_dir()} (the torch hub cache under TORCH_HOME), then try again."
    )


def _ensure_downloaded(name: str, w, progress: DownloadProgress | None) -> None:
    """Download ``w`` into the hub cache unless it is there; report bytes as they arrive."""
    path = weights_file(name, w.name)
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


def download_weights(name: str, weights: str = "default", *, progress: DownloadProgress | None = None) -> str:
    """Make sure the torchvision weights of ``name`` are in the hub cache (downloading them, checked
    against the SHA-256 prefix in their published file name); returns the file's path."""
    get_spec(name)  # UnknownModelError for a bad name
    w = _weights_enum(name, weights)
    _ensure_downloaded(name, w, progress)
    return weights_file(name, w.name)


def _build_with_cached(name: str, w) -> torch.nn.Module:
    path = weights_file(name, w.name)
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
