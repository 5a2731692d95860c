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
from .preprocess import Fit, check_polarity
from .progress import CancelCheck, Progress, check_image_and_fit
from .render import Normalize

#: ``heatmaps("relative")``: the scale relative to the top class's map (``explain(relative=True)``).
RELATIVE = "relative"


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
    original: Image.Image | None = None  # the picture as given (upright RGB), before the model's geometry
    view_box: tuple[int, int, int, int] | None = None  # the part of ``original`` the model view shows
    #: Greyscale models: how the picture was read ("dark_on_light"/"light_on_dark"), whether that
    #: was read from the picture ("auto") or given, and whether the input was flipped for the model.
    polarity: str | None = None
    polarity_auto: bool = True
    polarity_flipped: bool = False
    #: (top-1 class, its map's maximum) at the same method and layer, with ``explain(relative=True)``.
    reference: tuple[int, float] | None = None

    def empty(self, index: int = 0) -> bool:
        """Whether the map of target ``index`` is zero everywhere (nothing raises that class's score)."""
        return not bool((self.maps[index] > 0).any())

    def strength(self, index: int = 0) -> float | None:
        """Map maximum of target ``index`` as a fraction of the top class's (``explain(relative=True)``)."""
        if self.reference is None:
            return None
        peak = self.reference[1]
        top = float(self.maps[index].max())
        return max(top, 0.0) / peak if peak > 0 else 0.0
    #: "Why A rather than B": the class B whose score was subtracted (maps of ``y_A − y_B``), or None.
    contrast: int | None = None
    contrast_name: str | None = None

    @property
    def method_info(self) -> Method:
        """The :class:`~explain.methods.Method` that made these maps (its title, flags, options)."""
        return get_method(self.method)

    def heatmaps(self, normalize: Normalize | str = "per_map", smooth: float = 0.0, on: str = "view") -> np.ndarray:
        """``[K, H, W]`` float32 in [0, 1] at the size of the model-view image (``on="view"``), or of
        the original picture (``on="original"``).

        ``normalize`` is one of :data:`~explain.NORMALIZATIONS`, or ``"relative"``: divided by
        the top class's map maximum (needs ``explain(..., relative=True)``), so weak evidence looks
        weak. On the original, a squashed view's map is resized to the whole picture; a centre
        crop's map covers the cropped part and is 0 elsewhere. ``smooth`` is σ in pixels of the
        model view (scaled with the picture on the original).
        """
        peak = None
        if normalize == RELATIVE:
            if self.reference is None:
                raise ExplainError("A scale relative to the top class needs explain(..., relative=True).")
            peak, normalize = max(self.reference[1], 1e-12), "max"
        info = self.method_info
        clip = info.clip_percentile
        # Signed maps (Integrated Gradients) show their positive part, the evidence *for* the class;
        # the evidence against stays in :attr:`maps`.
        maps = self.maps.clamp(min=0) if info.signed else self.maps
        if on == "view":
            w, h = self.image.size
            return render.heatmaps(maps, (h, w), normalize, smooth, clip, peak)
        if on != "original":
            raise ExplainError(f"Unknown target picture {on!r}: use 'view' or 'original'.")
        if self.original is None or self.view_box is None:
            raise ExplainError("This explanation does not keep its original picture; use on='view'.")
        w0, h0 = self.original.size
        x0, y0, x1, y1 = self.view_box
        sigma = smooth * (x1 - x0) / max(self.image.size[0], 1)
        inner = render.heatmaps(maps, (y1 - y0, x1 - x0), normalize, sigma, clip, peak)
        if (x0, y0, x1, y1) == (0, 0, w0, h0):
            return inner
        out = np.zeros((inner.shape[0], h0, w0), np.float32)
        out[:, y0:y1, x0:x1] = inner
        return out

    def overlays(
        self,
        normalize: Normalize | str = "per_map",
        colormap: str = "jet",
        alpha: float = 0.5,
        smooth: float = 0.0,
        contour: bool = False,
        box: bool = False,
        *,
        mode: str = "blend",
        heat_weight: float = 0.5,
        image_weight: float = 1.0,
        on: str = "view",
    ) -> list[Image.Image]:
        """One overlay picture per target (see :func:`explain.render.overlay` for ``mode`` and the
        weights; ``on="original"`` draws on the picture as given, the part a centre crop cut off dimmed)."""
        base, inside = self.image, None
        if on == "original":
            base = self.original
            w0, h0 = base.size
            x0, y0, x1, y1 = self.view_box
            if (x0, y0, x1, y1) != (0, 0, w0, h0):
                inside = np.zeros((h0, w0), bool)
                inside[y0:y1, x0:x1] = True
        return [
            render.overlay(base, h, colormap, alpha, contour=contour, box=box, mode=mode, heat_weight=heat_weight,
                           image_weight=image_weight, inside=inside)
            for h in self.heatmaps(normalize, smooth, on=on)
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
    polarity: str = "auto",
    relative: bool = False,
) -> Explanation:
    """Explain ``model``'s prediction on ``image`` for ``targets`` (default: the top-1 class).

    The forward pass of (model, image, layer) is kept by the model, so calling again with other
    targets or another method of the same layer costs only a batched backward through the head.
    ``options`` are the method's own parameters (``get_method(method).params`` declares them).
    ``polarity`` (greyscale models): ``"auto"`` reads from the picture whether it is drawn dark on
    light or light on dark, or say which; a picture drawn the other way round from the model's
    training pictures is flipped. ``relative`` also computes the top class's map (same method and
    layer) so that ``heatmaps("relative")`` and :meth:`Explanation.strength` can compare with it.
    ``contrast=B`` explains "why each target *rather than* B": the maps of ``y_target − y_B``
    (methods with ``supports_contrast``; one more row of the same backward pass).
    """
    check_image_and_fit(image, fit, "explain")
    check_polarity(polarity)
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
    extra = (image, fit, polarity, relative, contrast)
    try:
        view, x = model.view_and_tensor(image, fit, polarity)  # moving the input to the GPU can run out too
        return _run(model, m, view, x, targets, layer, top_k, opts, progress, cancel, notices, extra)
    except torch.cuda.OutOfMemoryError:
        fallback = model.cpu_twin()
        notices.append("The GPU ran out of memory; this explanation was computed on the CPU instead.")
        model.clear_cache()
        view, x = fallback.view_and_tensor(image, fit, polarity)
        return _run(fallback, m, view, x, targets, layer, top_k, opts, progress, cancel, notices, extra)


def empty_notice(name: str) -> str:
    """What is said instead of a picture when a class's map is zero everywhere."""
    return f"No part of the picture raises the score of '{name}' at this layer (its map is zero everywhere)."


def _run(model, m, view, x, targets, layer, top_k, opts, progress, cancel, notices, extra) -> Explanation:
    image, fit, polarity, relative, contrast = extra
    relative = relative and contrast is None  # the relative scale compares plain class maps
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
    top1 = predictions[0][0]
    wanted = classes + ([top1] if relative and top1 not in classes else [])
    kw = {"contrast": contrast} if contrast is not None else {}
    all_maps = m.maps(model, cap, wanted, progress=progress, cancel=cancel, options=opts, **kw)
    maps = all_maps[: len(classes)]
    reference = None
    if relative:
        ref = all_maps[wanted.index(top1)].detach().float().cpu()
        # Sparse maps (input gradients) take a high percentile as their top, as their own scale does.
        peak = float(torch.quantile(ref.flatten(), m.clip_percentile / 100.0)) if m.clip_percentile else float(ref.max())
        reference = (top1, max(peak, 0.0))
    maps = maps.detach().to("cpu", torch.float32)
    # One vectorised test for all targets (CAM for 1000 classes must not loop over tensors).
    for i in (~(maps.flatten(1) > 0).any(dim=1)).nonzero().flatten().tolist():
        notices.append(empty_notice(model.categories[classes[i]]))
    note = cap.extras.get(f"notice:{m.name}")
    if isinstance(note, str):
        notices.append(note)
    reading = model.preprocess.read(view, polarity)
    original = image.convert("RGB") if image.mode != "RGB" else image
    return Explanation(
        model_name=model.name,
        layer=cap_layer,
        method=m.name,
        targets=classes,
        target_names=[model.categories[c] for c in classes],
        predictions=predictions,
        maps=maps,
        image=view,
        probs=probs.numpy(),
        notices=notices,
        options=opts,
        original=original,
        view_box=model.preprocess.view_box(original.size, fit),
        polarity=reading,
        polarity_auto=polarity == "auto",
        polarity_flipped=model.preprocess.flips(reading) != bool(model.preprocess.invert),
        reference=reference,
        contrast=contrast,
        contrast_name=model.categories[contrast] if contrast is not None else None,
    )


def top_predictions(probs: torch.Tensor, categories: Sequence[str], k: int = 5) -> list[tuple[int, str, float]]:
    """``[(index, name, probability), ...]`` of the ``k`` most probable classes, best first."""
    k = max(1, min(int(k), len(categories)))
    top = torch.topk(probs.detach().float().cpu(), k)
    return [(int(i), categories[int(i)], float(p)) for p, i in zip(top.values, top.indices)]


def predict_top(model: Model, image: Image.Image, fit: Fit = "squash", *, layer: str | None = None,
                method: str = DEFAULT_METHOD, k: int = 5, polarity: str = "auto") -> list[tuple[int, str, float]]:
    """The top-``k`` predictions of ``image``, from the very capture an explanation by ``method``
    at ``layer`` will reuse (so predicting first costs no extra forward pass)."""
    check_image_and_fit(image, fit, "predict_top")
    m = get_method(method)
    _view, x = model.view_and_tensor(image, fit, check_polarity(polarity))
    cap = model.capture(x, m.capture_layer(model, layer))
    return top_predictions(cap.probs, model.categories, k)


def _class_indices(model: Model, targets: Sequence[int | str]) -> list[int]:
    """Validated class indices; plain ints (e.g. all 1000 classes for CAM) are checked in one pass."""
    n = model.num_classes
    if all(type(t) is int for t in targets):
        if all(0 <= t < n for t in targets):
            return list(targets)  # type: ignore[arg-type]
    return [model.class_index(t) for t in targets]
