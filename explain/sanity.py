"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

If a map is an explanation of what the model learned, it must change when what the model learned
is destroyed. Cascading randomisation replaces the weights of the model's last parameterised
layers by fresh random ones, from the output downwards (first everything *after* the target
layer, which is all a gradient-based map depends on besides the activations, then deeper), and
compares each new map with the original one: Spearman rank correlation of the maps at input
resolution, and SSIM of the per-map-normalised heatmaps. A map that stays the same (an edge
detector, say) explains the picture, not the model.

The shared model is never changed: each stage works on ``Model.randomised_copy`` (a deep copy),
deleted after use. Layer order comes from one forward pass of *another* deep copy with temporary
hooks, never from hooks on the shared module.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from . import render
from .errors import Cancelled, ExplainError
from .explanation import explain as _explain
from .methods import DEFAULT_METHOD, get_method
from .model import Model, plain_copy
from .progress import CancelCheck, Progress, check_image_and_fit
from .preprocess import Fit

# Rank correlation above which a map "barely changed" after randomisation. Adebayo et al. show
# maps that fail the check staying well above this; maps that pass fall to near zero.
SANITY_SPEARMAN_THRESHOLD = 0.7

MapFn = Callable[[Model, Image.Image, int], np.ndarray]


class RandomisedMap(NamedTuple):
    """One stage of the cascade."""

    label: str  # in words, e.g. "top 1 layer ('classifier'; everything after 'bn2')"
    layers: list[str]  # module names given random weights, from the output downwards
    heat: np.ndarray  # [H, W] in [0, 1], per-map normalised
    spearman: float  # rank correlation with the original map (1: same order of pixels)
    ssim: float  # structural similarity with the original heatmap (1: identical)


@dataclass
class SanityResult:
    """The original map and the map after each stage of cascading randomisation."""

    method: str
    layer: str | None  # target layer (None for input-pixel methods)
    cls: int
    original: np.ndarray  # [H, W] in [0, 1]
    randomised: list[RandomisedMap] = field(default_factory=list)
    original_prob: float = math.nan  # probability of ``cls`` by the trained model
    stage_probs: list[float] = field(default_factory=list)  # ... by each randomised model
    threshold: float = SANITY_SPEARMAN_THRESHOLD

    @property
    def passed(self) -> bool:
        """True if the map changed substantially at some stage of the cascade."""
        return any(s.spearman <= self.threshold for s in self.randomised)

    def verdict(self) -> str:
        """The outcome in plain language."""
        if not self.randomised:
            return "No layers were randomised, so there is nothing to compare."
        first = self.randomised[0]
        lowest = min(self.randomised, key=lambda s: s.spearman)
        if not self.passed:
            return (
                "The map barely changed when the model's top layers were replaced by random weights "
                f"(rank correlation {lowest.spearman:.2f} even with the {lowest.label} randomised): "
                "this method is NOT explaining what the model learned here."
            )
        if first.spearman <= self.threshold:
            return (
                f"The map changed a lot (rank correlation {first.spearman:.2f}) when the top layers were "
                "randomised: it depends on what the model learned, as it should."
            )
        return (
            f"The map stayed similar with only the {first.label} randomised (rank correlation "
            f"{first.spearman:.2f}), but changed a lot ({lowest.spearman:.2f}) with the {lowest.label} "
            "randomised: it depends on what the model learned, mostly through its deeper layers."
        )


# ---- layer order -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CallOrder:
    names: list[str]  # parameterised modules in forward-call order
    ends: dict[str, int]  # event index at which each module's (first) call returned
    starts: dict[str, int]  # event index at which each module's (first) call began


_ORDERS: weakref.WeakKeyDictionary[Model, _CallOrder] = weakref.WeakKeyDictionary()
_ORDERS_LOCK = threading.Lock()


def _call_order(model: Model) -> _CallOrder:
    with _ORDERS_LOCK:
        known = _ORDERS.get(model)
    if known is not None:
        return known
    # Hooks go on a deep copy: the shared module is used by other sessions at the same time.
    module = plain_copy(model.module)
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    counter = [0]

    def pre(name: str):
        def hook(_m, _i):
            if name not in starts:
                starts[name] = counter[0]
            counter[0] += 1
        return hook

    def post(name: str):
        def hook(_m, _i, _o):
            if name not in ends:
                ends[name] = counter[0]
            counter[0] += 1
        return hook

    for name, sub in module.named_modules():
        sub.register_forward_pre_hook(pre(name))
        sub.register_forward_hook(post(name))
    p = model.preprocess
    with torch.no_grad():
        module(torch.zeros(1, p.in_channels, p.input_size, p.input_size, device=model.device))
    named = dict(module.named_modules())
    # Modules that never run (e.g. auxiliary heads in eval mode) cannot affect any map.
    names = sorted(
        (n for n in starts if list(named[n].parameters(recurse=False))), key=lambda n: starts[n]
    )
    del module
    order = _CallOrder(names, ends, starts)
    with _ORDERS_LOCK:
        _ORDERS[model] = order
    return order


def parameterised_layers(model: Model) -> list[str]:
    """Modules holding parameters directly, in the order the forward pass calls them."""
    return list(_call_order(model).names)


def top_layers(model: Model, n: int) -> list[str]:
    """The last ``n`` parameterised modules, counted from the output (output end first)."""
    names = _call_order(model).names
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ExplainError(f"The number of layers must be a whole number ≥ 0, not {n!r}.")
    if n > len(names):
        raise ExplainError(f"Model '{model.name}' has only {len(names)} parameterised layers, not {n}.")
    return names[::-1][: int(n)]


def layers_above(model: Model, layer: str | None) -> list[str]:
    """Parameterised modules that run after ``layer`` has returned (output end first).

    ``layer=None`` stands for the input pixels: every parameterised module is above them.
    """
    order = _call_order(model)
    if layer is None:
        return order.names[::-1]
    name = model.layer_info(layer).name
    end = order.ends.get(name)
    if end is None:
        raise ExplainError(f"Layer '{name}' did not run in a forward pass of '{model.name}'.")
    return [n for n in order.names[::-1] if order.starts[n] > end]


# ---- the check ---------------------------------------------------------------------------------

def cascading_randomisation(
    model: Model,
    image: Image.Image,
    cls: int | str,
    method: str = DEFAULT_METHOD,
    layer: str | None = None,
    steps: int | Sequence[int] = 3,
    fit: Fit = "squash",
    seed: int = 0,
    *,
    map_fn: MapFn | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> SanityResult:
    """Compare the map of ``cls`` with the maps after randomising more and more top layers.

    ``steps``: an int is the number of stages, from "everything after the target layer" (at least
    one layer) to "every layer" on a geometric scale; a list gives the layer counts explicitly
    (each between 1 and :func:`parameterised_layers`'s length). ``map_fn(model, image, cls) ->
    [H, W]`` replaces the method (for checking a custom map); the target layer then only decides
    the default stages. ``progress(done, total)`` is called after each stage, ``cancel()`` before.
    """
    check_image_and_fit(image, fit, "cascading_randomisation")
    c = model.class_index(cls)
    m = get_method(method)
    target = None if (m.on_input and map_fn is None) else model.layer_info(layer).name
    size = (model.preprocess.input_size, model.preprocess.input_size)
    label = m.name if map_fn is None else getattr(map_fn, "__name__", "custom map")

    def stage(mdl: Model) -> tuple[np.ndarray, float]:
        if map_fn is None:
            r = _explain(mdl, image, targets=[c], layer=target, method=m.name, fit=fit, cancel=cancel)
            return _as_map(r.maps[0].numpy(), size), r.prob(c)
        return _as_map(map_fn(mdl, image, c), size), _prob(mdl, image, c, fit)

    counts = _stage_counts(model, target, steps)
    original, original_prob = stage(model)
    result = SanityResult(
        method=label,
        layer=target, cls=c, original=_normalize(original), original_prob=original_prob,
    )
    above = len(layers_above(model, target))
    for i, k in enumerate(counts):
        if cancel is not None and cancel():
            raise Cancelled("The sanity check was cancelled.")
        names = top_layers(model, k)
        twin = randomised_model(model, names, seed=seed)
        try:
            heat, prob = stage(twin)
        finally:
            del twin  # ~20 MB for lite0; freed by reference counting, no full gc.collect() (0.5 s)
        result.randomised.append(RandomisedMap(
            label=_label(names, k, above, target, len(parameterised_layers(model))),
            layers=names, heat=_normalize(heat), spearman=rank_correlation(original, heat),
            ssim=similarity(original, heat),
        ))
        result.stage_probs.append(prob)
        if progress is not None:
            progress(i + 1, len(counts))
    return result


def randomised_model(model: Model, layers: Sequence[str], seed: int = 0) -> Model:
    """A new Model, deep-copied from ``model``, with every parameter of ``layers`` re-initialised.

    (See ``Model.randomised_copy``: modules' own ``reset_parameters``, else a normal draw with std
    ``FALLBACK_INIT_STD``.) The shared model is only read.
    """
    if isinstance(layers, str):
        raise ExplainError(f"layers must be a list of module names, not the string {layers!r}.")
    names = list(layers)
    known = dict(model.module.named_modules())
    missing = [n for n in names if n not in known]
    if missing:
        raise ExplainError(f"Model '{model.name}' has no module named {', '.join(map(repr, missing))}.")
    return model.randomised_copy(layers=names, seed=seed)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of one shape (ties get their average rank).

    A constant map has no pixel order: two constant maps count as identical (1.0) and a constant
    map against a varying one as unrelated (0.0), instead of NaN.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ExplainError(f"Maps of different sizes cannot be compared: {a.size} and {b.size} pixels.")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if (flat_a and flat_b) else 0.0
    # Pearson correlation of the ranks, computed with numpy (same as scipy.stats.spearmanr,
    # without importing scipy into the engine).
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float(np.clip((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)), -1.0, 1.0))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of the two maps after per-map min–max normalisation (data range 1); NaN without scikit-image."""
    na, nb = _normalize(np.asarray(a)), _normalize(np.asarray(b))
    if na.shape != nb.shape:
        raise ExplainError(f"Maps of different shapes cannot be compared: {na.shape} and {nb.shape}.")
    try:
        from skimage.metrics import structural_similarity  # imported here: slow, and optional
    except ImportError:  # pragma: no cover - scikit-image is a dependency of the project
        return math.nan
    return float(structural_similarity(na, nb, data_range=1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; equal values share the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse].astype(np.float64)


# ---- helpers -----------------------------------------------------------------------------------

def _stage_counts(model: Model, target: str | None, steps: int | Sequence[int]) -> list[int]:
    total = len(parameterised_layers(model))
    if total == 0:
        raise ExplainError(f"Model '{model.name}' has no parameters to randomise.")
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if steps < 1:
            raise ExplainError(f"steps must be at least 1, not {steps}.")
        # Layer methods: first everything after the target layer. Input-pixel methods have every
        # layer above them, so their cascade starts at the output layer, as in Adebayo et al.
        first = max(1, len(layers_above(model, target))) if target is not None else 1
        if steps == 1 or first == total:
            return [first]
        raw = np.geomspace(first, total, int(steps))
        return sorted({int(v) for v in np.rint(raw)})
    try:
        counts = sorted({int(v) for v in steps})  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ExplainError(f"steps must be a number of stages or a list of layer counts, not {steps!r}.") from None
    if not counts or counts[0] < 1 or counts[-1] > total:
        raise ExplainError(f"Each stage must randomise between 1 and {total} layers of '{model.name}', not {steps!r}.")
    return counts


def _label(names: list[str], k: int, above: int, target: str | None, total: int) -> str:
    if k == total:
        return f"all {k} layers"
    head = f"top {k} layer{'s' if k != 1 else ''}"
    span = f"'{names[0]}'" if k == 1 else f"'{names[0]}' … '{names[-1]}'"
    if k == above and target is not None:
        return f"{head} ({span}; everything after '{target}')"
    return f"{head} ({span})"


def _prob(model: Model, image: Image.Image, cls: int, fit: Fit) -> float:
    _, x = model.view_and_tensor(image, fit)
    return float(model.predict(x)[0, cls])


def _as_map(heat: object, size: tuple[int, int]) -> np.ndarray:
    h = render.single_map(heat, "The map a map function returns")
    if h.shape != size:
        h = render.upsample(h[None], size)[0]
    return h


def _normalize(h: np.ndarray) -> np.ndarray:
    return render.normalize_maps(h[None].astype(np.float32), "per_map")[0]


__all__ = [
    "SANITY_SPEARMAN_THRESHOLD", "RandomisedMap", "SanityResult", "cascading_randomisation", "layers_above",
    "parameterised_layers", "randomised_model", "rank_correlation", "similarity", "top_layers",
]
