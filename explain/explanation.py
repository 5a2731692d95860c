"""``explain()``: one call from a picture to maps, and the :class:`Explanation` it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import render
from .errors import ExplainError, MethodNotApplicableError
from .methods import DEFAULT_METHOD, Method, all_methods, get_method
from .model import Model
from .preprocess import Fit
from .progress import CancelCheck, Progress, check_image_and_fit
from .render import Normalize


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
    options: dict[str, float | int] = field(default_factory=dict)  # the method's options, as used
    #: "Why A rather than B": the class B whose score was subtracted (maps of ``y_A − y_B``), or None.
    contrast: int | None = None
    contrast_name: str | None = None

    @property
    def method_info(self) -> Method:
        """The :class:`~explain.methods.Method` that made these maps (its title, flags, options)."""
        return get_method(self.method)

    def heatmaps(self, normalize: Normalize = "per_map", smooth: float = 0.0) -> np.ndarray:
        """``[K, H, W]`` float32 in [0, 1] at the size of the model-view image.

        Signed maps (Integrated Gradients) show their positive part, the evidence *for* the class,
        scaled to its ``clip_percentile``; the evidence against stays in :attr:`maps`.
        """
        w, h = self.image.size
        info = self.method_info
        maps = self.maps.clamp(min=0) if info.signed else self.maps
        return render.heatmaps(maps, (h, w), normalize, smooth, info.clip_percentile)

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
    method: str = DEFAULT_METHOD,
    top_k: int = 5,
    fit: Fit = "squash",
    *,
    options: dict[str, object] | None = None,
    contrast: int | str | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> Explanation:
    """Explain ``model``'s prediction on ``image`` for ``targets`` (default: the top-1 class).

    The forward pass of (model, image, layer) is kept by the model, so calling again with other
    targets or another method of the same layer costs only a batched backward through the head.
    ``options`` are the method's own parameters (``get_method(method).params`` declares them).
    ``contrast=B`` explains "why each target *rather than* B": the maps of ``y_target − y_B``
    (methods with ``supports_contrast``; one more row of the same backward pass).
    """
    check_image_and_fit(image, fit, "explain")
    m = get_method(method)
    opts = m.options(options)
    if contrast is not None:
        if not m.supports_contrast:
            able = ", ".join(x.title for x in all_methods() if x.supports_contrast)
            raise MethodNotApplicableError(
                f"{m.title} cannot explain one class rather than another (it does not work from the "
                f"class scores' gradients or weights). Use one of: {able}; or leave out the contrast class."
            )
        contrast = model.class_index(contrast)
    if not m.on_input:
        m.check(model, layer or model.default_layer)
    notices: list[str] = []
    try:
        view, x = model.view_and_tensor(image, fit)  # moving the input to the GPU can run out too
        return _run(model, m, view, x, targets, layer, top_k, opts, contrast, progress, cancel, notices)
    except torch.cuda.OutOfMemoryError:
        fallback = model.cpu_twin()
        notices.append("The GPU ran out of memory; this explanation was computed on the CPU instead.")
        model.clear_cache()
        view, x = fallback.view_and_tensor(image, fit)
        return _run(fallback, m, view, x, targets, layer, top_k, opts, contrast, progress, cancel, notices)


def _run(model, m, view, x, targets, layer, top_k, opts, contrast, progress, cancel, notices) -> Explanation:
    cap_layer = m.capture_layer(model, layer)
    cap = model.capture(x, cap_layer)
    probs = cap.probs.detach().cpu()
    predictions = top_predictions(probs, model.categories, top_k)
    if targets is None or len(targets) == 0:
        classes = [predictions[0][0]]
    else:
        classes = _class_indices(model, targets)
    if contrast is not None and contrast in classes:
        raise ExplainError(
            f"'{model.categories[contrast]}' is both a target and the class to contrast with: "
            "'A rather than A' has no map. Pick another class to contrast with."
        )
    # The contrast keyword only when used, so that a plug-in method without it still runs.
    extra = {"contrast": contrast} if contrast is not None else {}
    maps = m.maps(model, cap, classes, progress=progress, cancel=cancel, options=opts, **extra)
    note = cap.extras.get(f"notice:{m.name}")
    if isinstance(note, str):
        notices.append(note)
    return Explanation(
        model_name=model.name,
        layer=cap_layer,
        method=m.name,
        targets=classes,
        target_names=[model.categories[c] for c in classes],
        predictions=predictions,
        maps=maps.detach().to("cpu", torch.float32),
        image=view,
        probs=probs.numpy(),
        notices=notices,
        options=opts,
        contrast=contrast,
        contrast_name=model.categories[contrast] if contrast is not None else None,
    )


def top_predictions(probs: torch.Tensor, categories: Sequence[str], k: int = 5) -> list[tuple[int, str, float]]:
    """``[(index, name, probability), ...]`` of the ``k`` most probable classes, best first."""
    k = max(1, min(int(k), len(categories)))
    top = torch.topk(probs.detach().float().cpu(), k)
    return [(int(i), categories[int(i)], float(p)) for p, i in zip(top.values, top.indices)]


def predict_top(model: Model, image: Image.Image, fit: Fit = "squash", *, layer: str | None = None,
                method: str = DEFAULT_METHOD, k: int = 5) -> list[tuple[int, str, float]]:
    """The top-``k`` predictions of ``image``, from the very capture an explanation by ``method``
    at ``layer`` will reuse (so predicting first costs no extra forward pass)."""
    check_image_and_fit(image, fit, "predict_top")
    m = get_method(method)
    _view, x = model.view_and_tensor(image, fit)
    cap = model.capture(x, m.capture_layer(model, layer))
    return top_predictions(cap.probs, model.categories, k)


def _class_indices(model: Model, targets: Sequence[int | str]) -> list[int]:
    """Validated class indices; plain ints (e.g. all 1000 classes for CAM) are checked in one pass."""
    n = model.num_classes
    if all(type(t) is int for t in targets):
        if all(0 <= t < n for t in targets):
            return list(targets)  # type: ignore[arg-type]
    return [model.class_index(t) for t in targets]
