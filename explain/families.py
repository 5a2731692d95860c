"""Model families, each declared once: how to build the module, its preprocessing, its categories,
its default sample, and whether (and how) an uploaded ``state_dict`` may target it.

In the spirit of torchvision's ``register_model`` / ``get_model`` / weights-with-metadata:

* a :class:`ModelSpec` is a loadable model (embedded weights, or a torchvision classifier whose
  weights download on first use). ``explain.load_model(name)`` is a lookup of its spec;
* an :class:`Architecture` is what the *Your model* page may load a state dict into: it checks
  the file against itself and builds the module with the classes and channels the file has.

Adding a model family is declaring its spec (and, if uploads may target it, its architecture)
next to its code and registering it; no other file changes. torchvision's classifiers are
declared from torchvision's own registry (``explain.registry``), never from a hand-written list.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from .errors import ExplainError
from .preprocess import Preprocess

#: The sample photo a colour ImageNet model starts with, and the one a greyscale model starts with.
COLOUR_SAMPLE = "cat.jpg"
GREY_SAMPLE = "digit_3.png"

DownloadProgress = Callable[[int, int], None]  # (bytes so far, total bytes or 0 if unknown)


@dataclass(frozen=True)
class Built:
    """What a spec's loader returns: the module and what the engine needs to explain it."""

    module: nn.Module
    categories: list[str]
    preprocess: Preprocess


@dataclass(frozen=True)
class ModelSpec:
    """One loadable model.

    ``load(weights, progress)`` returns a :class:`Built`; ``weights`` is ``"default"`` (the real
    weights), a weights name, or ``None`` for random initialisation. ``cached()`` says whether the
    weights are on disk (embedded ones always are).
    """

    name: str
    source: str  # "embedded", "torchvision", or a plug-in's own word
    description: str
    load: Callable[[str | None, DownloadProgress | None], Built]
    size_mb: float = 0.0
    weights_file: str = ""  # file name in the hub cache ("" when nothing is downloaded)
    default_sample: str = COLOUR_SAMPLE
    cached: Callable[[], bool] = lambda: True
    default_layer: str | None = None  # None: the engine's own choice (last spatial map)


@dataclass(frozen=True)
class Architecture:
    """An architecture an uploaded ``state_dict`` may be loaded into (the *Your model* page).

    ``build(state, source)`` checks the tensors against the architecture (raising
    :class:`~explain.WeightsMismatchError` that names the first mismatching keys or shapes) and
    returns the module, with the number of classes and input channels read from the weights.
    ``preprocess(in_channels, input_size)`` gives the default preprocessing (``input_size`` None:
    the architecture's own).
    """

    name: str
    description: str
    build: Callable[[Mapping[str, torch.Tensor], str], nn.Module]
    preprocess: Callable[[int, int | None], Preprocess]
    default_layer: str | None = None
    #: The polarity its training pictures had, for greyscale input: "dark_on_light", "light_on_dark".
    polarity: str | None = None


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in index order, from torchvision's weights metadata."""
    from torchvision.models import get_model_weights

    return list(get_model_weights("resnet50").DEFAULT.meta["categories"])


_LOCK = threading.Lock()
_MODELS: dict[str, ModelSpec] = {}
_ARCHITECTURES: dict[str, Architecture] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Declare a loadable model (returns it). Names are unique."""
    with _LOCK:
        if spec.name in _MODELS:
            raise ExplainError(f"A model named {spec.name!r} is registered already.")
        _MODELS[spec.name] = spec
    return spec


def register_architecture(arch: Architecture) -> Architecture:
    """Declare an architecture uploads may target (returns it). Names are unique."""
    with _LOCK:
        if arch.name in _ARCHITECTURES:
            raise ExplainError(f"An architecture named {arch.name!r} is registered already.")
        _ARCHITECTURES[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    """Remove a model or architecture declared by :func:`register_model` / :func:`register_architecture`."""
    with _LOCK:
        _MODELS.pop(name, None)
        _ARCHITECTURES.pop(name, None)


def declared_models() -> list[ModelSpec]:
    """The declared (non-torchvision) models, in declaration order."""
    with _LOCK:
        return list(_MODELS.values())


def declared_model(name: str) -> ModelSpec | None:
    with _LOCK:
        return _MODELS.get(name)


def declared_architectures() -> list[Architecture]:
    """The declared (non-torchvision) upload architectures, in declaration order."""
    with _LOCK:
        return list(_ARCHITECTURES.values())


def declared_architecture(name: str) -> Architecture | None:
    with _LOCK:
        return _ARCHITECTURES.get(name)
