"""``explain()``: one call from a picture to maps, and the :class:`Explanation` it returns."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import render
from .errors import ExplainError
from .methods import CancelCheck, Progress, get_method, layer_for
from .model import INPUT_LAYER, Model, strip_taps
from .preprocess import Fit
from .render import Normalize


# Input gradients are sparse: scale them to their 99th percentile so that more than a handful of
# pixels is visible (as in Smilkov et al., "SmoothGrad", 2017).
SALIENCY_CLIP_PERCENTILE = 99.0


@dataclass
class Explanation:
    """Maps of one image for one or more classes, by one method at one layer."""

    model_name: str
    layer: str
    method: str
    targets: list[int]
    target_names: list[str]
    predictions: list[tuple[int, str, float]]
    maps: torch.Tensor  # [K, h, w] raw, unnormalised, float32 on the CPU
    image: Image.Image  # as the model saw it
    probs: np.ndarray  # [N] probabilities of every class for the unmasked image
    notices: list[str] = field(default_factory=list)

    def heatmaps(self, normalize: Normalize = "per_map", smooth: float = 0.0) -> np.ndarray:
        """``[K, H, W]`` float32 in [0, 1] at the size of the model-view image."""
        w, h = self.image.size
        clip = SALIENCY_CLIP_PERCENTILE if self.method == "saliency" else None
        return render.heatmaps(self.maps, (h, w), normalize, smooth, clip)

    def overlays(
        self,
        normalize: Normalize = "per_map",
        colormap: str = "jet",
        alpha: float = 0.5,
        smooth: float = 0.0,
        contour: bool = False,
        box: bool = False,
    ) -> list[Image.Image]:
        """One overlay picture per target."""
        return [
            render.overlay(self.image, h, colormap, alpha, contour=contour, box=box)
            for h in self.heatmaps(normalize, smooth)
        ]

    def prob(self, cls: int) -> float:
        """Probability the model gives class ``cls`` on this image."""
        return float(self.probs[cls])


def explain(
    model: Model,
    image: Image.Image,
    targets: Sequence[int | str] | None = None,
    layer: str | None = None,
    method: str = "gradcam",
    top_k: int = 5,
    fit: Fit = "squash",
    *,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> Explanation:
    """Explain ``model``'s prediction on ``image`` for ``targets`` (default: the top-1 class).

    The forward pass of (model, image, layer) is kept by the model, so calling again with other
    targets or another method of the same layer costs only a batched backward through the head.
    """
    if not isinstance(image, Image.Image):
        raise ExplainError(f"explain() needs a PIL image, not {type(image).__name__}; use explain.load_image().")
    m = get_method(method)
    if not m.input_layer:
        m.check(model, layer or model.default_layer)
    notices: list[str] = []
    try:
        view, x = model.view_and_tensor(image, fit)  # moving the input to the GPU can run out too
        return _run(model, m, view, x, targets, layer, top_k, progress, cancel, notices)
    except torch.cuda.OutOfMemoryError:
        fallback = _cpu_twin(model)
        notices.append("The GPU ran out of memory; this explanation was computed on the CPU instead.")
        model.clear_cache()
        view, x = fallback.view_and_tensor(image, fit)
        return _run(fallback, m, view, x, targets, layer, top_k, progress, cancel, notices)


def _run(model, m, view, x, targets, layer, top_k, progress, cancel, notices) -> Explanation:
    cap_layer = layer_for(m, layer, model)
    cap = model.capture(x, cap_layer)
    probs = cap.probs.detach().cpu()
    k = max(1, min(int(top_k), model.num_classes))
    top = torch.topk(probs, k)
    predictions = [(int(i), model.categories[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
    if targets is None or len(targets) == 0:
        classes = [predictions[0][0]]
    else:
        classes = _class_indices(model, targets)
    maps = m.maps(model, cap, classes, progress=progress, cancel=cancel)
    return Explanation(
        model_name=model.name,
        layer=cap_layer if cap_layer != INPUT_LAYER else "input",
        method=m.name,
        targets=classes,
        target_names=[model.categories[c] for c in classes],
        predictions=predictions,
        maps=maps.detach().to("cpu", torch.float32),
        image=view,
        probs=probs.numpy(),
        notices=notices,
    )


def _class_indices(model: Model, targets: Sequence[int | str]) -> list[int]:
    """Validated class indices; plain ints (e.g. all 1000 classes for CAM) are checked in one pass."""
    n = model.num_classes
    if all(type(t) is int for t in targets):
        if all(0 <= t < n for t in targets):
            return list(targets)  # type: ignore[arg-type]
    return [model.class_index(t) for t in targets]


def _cpu_twin(model: Model) -> Model:
    """A CPU copy of a GPU model (made once), for when the GPU runs out of memory."""
    with _TWIN_LOCK:  # two sessions running out of GPU memory at once build one twin, not two
        return _cpu_twin_locked(model)


_TWIN_LOCK = threading.Lock()


def _cpu_twin_locked(model: Model) -> Model:
    twin = getattr(model, "_cpu_twin", None)
    if twin is None:
        import copy

        # Pre-seed deepcopy's memo with CPU copies of the tensors, so that no second copy of the
        # model is made on a GPU that has just run out of memory.
        memo: dict[int, object] = {}
        for p in model.module.parameters():
            memo[id(p)] = torch.nn.Parameter(p.detach().cpu(), requires_grad=p.requires_grad)
        for b in model.module.buffers():
            memo[id(b)] = b.detach().cpu()
        module = strip_taps(copy.deepcopy(model.module, memo))
        twin = Model(model.name, module, model.categories, model.preprocess, device="cpu", source=model.source)
        model._cpu_twin = twin  # type: ignore[attr-defined]
    return twin
