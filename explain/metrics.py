"""Faithfulness of a map: deletion and insertion curves (Petsiuk et al., "RISE", BMVC 2018).

A map claims that some pixels matter more than others for one class. Deletion takes it at its
word: remove the pixels in order of decreasing heat and watch the class probability. A faithful
map makes it fall fast (small area under the curve). Insertion goes the other way: start from an
image with the information gone and put the pixels back, hottest first; a faithful map makes the
probability rise fast (large area). A random pixel order is the yardstick either way.

Baselines ("what a removed pixel becomes") are defined in *pixel space*, on the picture as the
model sees it, and then go through the model's own ``preprocess.to_tensor``: "zero" in normalised
space is the training set's mean colour for one model, mid-grey for another and something else
again for the digits model, so it is never used directly. The defaults:

* deletion → ``"mean"``: every removed pixel takes the picture's own mean colour. This is what
  RISE's reference code does in effect (it writes zeros into the ImageNet-normalised tensor, i.e.
  the dataset's mean colour), without depending on one model's constants. A flat colour carries no
  evidence; black (``"zero"``) is offered too but is a strong feature of its own: on the cat sample
  a black blob over the face leaves "Egyptian cat" at about 80% until a quarter of the picture is gone.
* insertion → ``"blur"``: a heavy Gaussian blur of the picture (sigma = 1/16 of the input size),
  which removes the detail but keeps the colours, so the model starts near chance (as in RISE).

``"zero"`` is black as the model sees it (for models that invert their input, such as the digits
model, that is no ink: white in the picture). Removed pixels are replaced outright (binary masks),
so blending before or after normalisation is the same thing and every step image is
``where(mask, baseline, image)`` on normalised tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter

from . import render
from .errors import Cancelled, ExplainError, MethodNotApplicableError
from .explanation import explain as _explain
from .methods import get_method
from .model import Model
from .preprocess import Fit
from .progress import CancelCheck, Progress, check_image_and_fit

Mode = Literal["deletion", "insertion", "both"]
Baseline = Literal["zero", "blur", "mean"]

MODES: tuple[str, ...] = ("deletion", "insertion", "both")
BASELINES: tuple[str, ...] = ("zero", "blur", "mean")
DELETION_BASELINE: Baseline = "mean"
INSERTION_BASELINE: Baseline = "blur"
# Blur strength of the "blur" baseline, as a fraction of the input size (14 px at 224), so that
# insertion starts from no evidence: with RISE's sigma 5 the cat sample still scores 11% "Egyptian
# cat" (lite0); at sigma 14 it scores 0.06%.
BLUR_SIGMA_FRACTION = 1.0 / 16.0
RANDOM_TITLE = "Random order"


@dataclass
class FaithfulnessResult:
    """Deletion and/or insertion curves of one class on one image for one pixel order."""

    cls: int
    fractions: np.ndarray  # [steps + 1], 0 … 1: share of pixels removed (deletion) or revealed (insertion)
    deletion: np.ndarray | None  # class probability at each fraction, or None if not computed
    insertion: np.ndarray | None
    deletion_auc: float | None  # trapezoid area under the curve over fraction ∈ [0, 1]
    insertion_auc: float | None
    start_prob: float  # probability of the class on the untouched image
    deletion_baseline: str | None = None
    insertion_baseline: str | None = None

    def prob_after_removing(self, fraction: float) -> float:
        """Class probability with the top ``fraction`` of pixels deleted (linear between steps)."""
        if self.deletion is None:
            raise ExplainError("This result has no deletion curve; compute it with mode='deletion' or 'both'.")
        f = float(fraction)
        if not 0.0 <= f <= 1.0:
            raise ExplainError(f"A fraction of pixels must be between 0 and 1, not {fraction!r}.")
        return float(np.interp(f, self.fractions, self.deletion))

    def prob_after_revealing(self, fraction: float) -> float:
        """Class probability with only the top ``fraction`` of pixels shown (linear between steps)."""
        if self.insertion is None:
            raise ExplainError("This result has no insertion curve; compute it with mode='insertion' or 'both'.")
        f = float(fraction)
        if not 0.0 <= f <= 1.0:
            raise ExplainError(f"A fraction of pixels must be between 0 and 1, not {fraction!r}.")
        return float(np.interp(f, self.fractions, self.insertion))


def ranking_from_heat(heat: np.ndarray) -> np.ndarray:
    """Flat pixel indices ``[H*W]`` by decreasing heat; ties keep raster order (row by row)."""
    h = _check_heat(heat)
    # A stable sort of the negated heat is deterministic and keeps raster order among equals
    # (Grad-CAM maps have large all-zero areas after the ReLU).
    return np.argsort(-h.ravel(), kind="stable").astype(np.int64)


def random_ranking(shape: tuple[int, int], seed: int = 0, grid: tuple[int, int] | None = None) -> np.ndarray:
    """A seeded random pixel order ``[H*W]`` of an ``(H, W)`` picture: the yardstick of the curves.

    ``grid=(h, w)``: the order of a random map made on that coarse grid and upsampled bilinearly,
    i.e. of a random *CAM-like* map (contiguous blobs at the target layer's resolution). That is
    the fair yardstick for maps made at a layer: deleting scattered single pixels with black is
    far more destructive than deleting regions (a few percent of black dots already wreck most
    classifiers), so a per-pixel random order (``grid=None``) beats any region-level map at
    deletion for reasons that have nothing to do with where the object is.
    """
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise ExplainError(f"A picture shape must be (height, width) with both at least 1, not {tuple(shape)!r}.")
    h, w = int(shape[0]), int(shape[1])
    rng = np.random.default_rng(seed)
    if grid is None:
        return rng.permutation(h * w).astype(np.int64)
    if len(grid) != 2 or any(int(g) < 1 for g in grid):
        raise ExplainError(f"A random map grid must be (rows, columns) with both at least 1, not {tuple(grid)!r}.")
    coarse = rng.random((1, int(grid[0]), int(grid[1]))).astype(np.float32)
    return ranking_from_heat(render.upsample(coarse, (h, w))[0])


def deletion_insertion(
    model: Model,
    image: Image.Image,
    cls: int | str,
    heat: np.ndarray | None,
    *,
    ranking: np.ndarray | None = None,
    steps: int = 32,
    mode: Mode = "both",
    fit: Fit = "squash",
    batch_size: int = 16,
    baseline: Baseline | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    polarity: str = "auto",
) -> FaithfulnessResult:
    """Deletion and/or insertion curves of class ``cls`` when pixels go in the order of ``heat``.

    ``heat`` is a map of the model-view picture (``[H, W]``, e.g. ``explanation.heatmaps()[k]``; a
    smaller map is upsampled bilinearly). Instead of it, ``ranking`` can give the pixel order
    directly (e.g. :func:`random_ranking`). ``baseline`` None means the standard per curve
    (deletion → ``"mean"``, insertion → ``"blur"``); a name uses that baseline for both. The
    ``steps + 1`` images of each curve are evaluated in batches of ``batch_size`` with
    ``model.predict``; ``progress(done, total)`` is called after each batch (images done, images in
    all) and ``cancel()`` is checked before each one (→ :class:`~explain.Cancelled`).
    """
    check_image_and_fit(image, fit, "deletion_insertion")
    if mode not in MODES:
        raise ExplainError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
    if baseline is not None and baseline not in BASELINES:
        raise ExplainError(f"Unknown baseline {baseline!r}: use one of {', '.join(BASELINES)}.")
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    c = model.class_index(cls)
    view, x = model.view_and_tensor(image, fit, polarity)  # greyscale: read as explain() reads it
    size = (view.size[1], view.size[0])
    order = _order(heat, ranking, size)

    do_del = mode in ("deletion", "both")
    do_ins = mode in ("insertion", "both")
    del_base = baseline or DELETION_BASELINE
    ins_base = baseline or INSERTION_BASELINE
    fractions = np.linspace(0.0, 1.0, steps + 1)
    n_pixels = size[0] * size[1]
    counts = np.rint(fractions * n_pixels).astype(np.int64)

    # Each job: (mask count, "replace" tensor for the top pixels, "keep" tensor for the rest).
    jobs: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    if do_del:
        b = _baseline_tensor(model, view, del_base, polarity)
        jobs += [(int(n), b, x) for n in counts]  # top-n pixels become the baseline
    if do_ins:
        b = _baseline_tensor(model, view, ins_base, polarity)
        jobs += [(int(n), x, b) for n in counts]  # top-n pixels are the real ones, the rest baseline

    # rank[p] = position of pixel p in the order; "pixel p is among the top n" is rank[p] < n.
    rank = torch.empty(n_pixels, dtype=torch.int64)
    rank[torch.from_numpy(order)] = torch.arange(n_pixels)
    rank = rank.view(1, 1, *size).to(x.device)

    probs = np.empty(len(jobs), dtype=np.float64)
    total = len(jobs)
    for start in range(0, total, batch_size):
        if cancel is not None and cancel():
            raise Cancelled("The deletion/insertion curves were cancelled.")
        chunk = jobs[start : start + batch_size]
        n = torch.tensor([j[0] for j in chunk], device=x.device).view(-1, 1, 1, 1)
        top = rank < n  # [B, 1, H, W]
        batch = torch.where(top, torch.cat([j[1] for j in chunk]), torch.cat([j[2] for j in chunk]))
        p = model.predict(batch)[:, c]
        probs[start : start + len(chunk)] = p.detach().cpu().double().numpy()
        if progress is not None:
            progress(start + len(chunk), total)

    k = steps + 1
    deletion = probs[:k] if do_del else None
    insertion = probs[-k:] if do_ins else None
    # Fraction 0 of deletion and fraction 1 of insertion are both the untouched picture.
    start_prob = float(deletion[0]) if deletion is not None else float(insertion[-1])  # type: ignore[index]
    return FaithfulnessResult(
        cls=c,
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=_auc(deletion, fractions),
        insertion_auc=_auc(insertion, fractions),
        start_prob=start_prob,
        deletion_baseline=del_base if do_del else None,
        insertion_baseline=ins_base if do_ins else None,
    )


RANDOM_KEY = "random"  # ``MethodComparison.method`` of the random yardstick


@dataclass
class MethodComparison:
    """One row of :func:`compare_methods`: a method's faithfulness, or why it does not apply."""

    method: str  # method name, or RANDOM_KEY for the random yardstick
    title: str
    heat: np.ndarray | None = None  # [H, W] in [0, 1]; None for the random order or on error
    result: FaithfulnessResult | None = None
    error: str | None = None  # why the method does not apply to this model/layer
    is_random: bool = False

    @property
    def deletion_auc(self) -> float | None:
        return self.result.deletion_auc if self.result is not None else None

    @property
    def insertion_auc(self) -> float | None:
        return self.result.insertion_auc if self.result is not None else None


def compare_methods(
    model: Model,
    image: Image.Image,
    cls: int | str,
    methods: Sequence[str],
    *,
    layer: str | None = None,
    steps: int = 32,
    mode: Mode = "both",
    fit: Fit = "squash",
    batch_size: int = 16,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    seed: int = 0,
    polarity: str = "auto",
) -> list[MethodComparison]:
    """Curves and areas for each method's pixel order, then for a seeded random order.

    Returns one :class:`MethodComparison` per method, then one for the random yardstick
    (``is_random``). A method that does not apply to this model/layer gets its ``error`` instead
    of a result. Unknown method names raise.
    Maps come from :func:`explain.explain`, so the model's capture cache is reused.
    ``progress(done, total)`` counts curve images over all rows.
    """
    if isinstance(methods, str):
        raise ExplainError(f"methods must be a list of method names, not the string {methods!r}.")
    names = [get_method(m).name for m in methods]  # unknown names are the caller's error
    c = model.class_index(cls)
    steps = _positive_int(steps, "steps")
    if mode not in MODES:
        raise ExplainError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
    check_image_and_fit(image, fit, "compare_methods")
    view = model.preprocess.view(image, fit)
    size = (view.size[1], view.size[0])
    # The random yardstick is a random map at the target layer's resolution (see random_ranking).
    random_grid = model.layer_info(layer).shape[1:]
    per_run = (steps + 1) * (2 if mode == "both" else 1)
    total = per_run * (len(names) + 1)
    done_before = 0

    def sub_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(done_before + done, total)

    rows: list[MethodComparison] = []
    for name in [*names, None]:  # None: the random yardstick
        if cancel is not None and cancel():
            raise Cancelled("The method comparison was cancelled.")
        row_heat: np.ndarray | None = None
        if name is None:
            heat, ranking = None, random_ranking(size, seed, grid=random_grid)
        else:
            try:
                r = _explain(model, image, targets=[c], layer=layer, method=name, fit=fit, cancel=cancel,
                             polarity=polarity)
            except MethodNotApplicableError as e:
                rows.append(MethodComparison(name, get_method(name).title, error=str(e)))
                total -= per_run
                continue
            # Rank on the raw map, upsampled: the display heatmap of saliency is clipped at a
            # percentile, which would turn its top pixels into one big tie.
            heat = render.upsample(r.maps[:1].numpy(), size)[0]
            ranking = None
            row_heat = r.heatmaps("per_map")[0]
        res = deletion_insertion(
            model, image, c, heat, ranking=ranking, steps=steps, mode=mode, fit=fit, polarity=polarity,
            batch_size=batch_size, progress=sub_progress, cancel=cancel,
        )
        done_before += per_run
        title = RANDOM_TITLE if name is None else get_method(name).title
        rows.append(MethodComparison(name or RANDOM_KEY, title, heat=row_heat, result=res, is_random=name is None))
    return rows


def plain_reading(method_title: str, class_name: str, result: FaithfulnessResult, fraction: float = 0.1) -> str:
    """One sentence on the deletion curve, e.g. "With Grad-CAM's top 10% of pixels removed, the
    model's confidence in 'tabby' falls from 62% to 9%." """
    after = result.prob_after_removing(fraction)
    before = result.start_prob
    share = f"{float(fraction) * 100:g}%"
    if method_title.strip().lower() in ("random", RANDOM_TITLE.lower()):
        lead = f"With {share} of the pixels removed at random"
    else:
        lead = f"With {method_title}'s top {share} of pixels removed"
    a, b = _pct(before), _pct(after)
    if a == b:
        change = f"stays at {a}"
    elif after < before:
        change = f"falls from {a} to {b}"
    else:
        change = f"rises from {a} to {b}"
    return f"{lead}, the model's confidence in '{class_name}' {change}."


# ---- helpers -------------------------------------------------------------------------------------

def _pct(p: float) -> str:
    v = 100.0 * float(p)
    if 0.0 < v < 0.1:
        return "<0.1%"
    if v < 1.0 and v != 0.0:
        return f"{v:.1f}%"
    return f"{v:.0f}%"


def _auc(curve: np.ndarray | None, fractions: np.ndarray) -> float | None:
    if curve is None:
        return None
    return float(np.trapezoid(curve, fractions))


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ExplainError(f"{name} must be a whole number of at least 1, not {value!r}.")
    return int(value)


def _check_heat(heat: np.ndarray) -> np.ndarray:
    return render.single_map(heat, "A heatmap", dtype=np.float64)


def _order(heat: np.ndarray | None, ranking: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    n = size[0] * size[1]
    if ranking is not None:
        if heat is not None:
            raise ExplainError("Give either a heatmap or a ranking, not both.")
        order = np.asarray(ranking).ravel()
        if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
            raise ExplainError(
                f"A ranking must be an order of all {n} pixels of the {size[1]}×{size[0]} model view "
                "(each index once), e.g. from random_ranking()."
            )
        return order.astype(np.int64)
    if heat is None:
        raise ExplainError("Give a heatmap (or a ranking) to order the pixels by.")
    h = _check_heat(heat)
    if h.shape != size:
        h = render.upsample(h[None].astype(np.float32), size)[0]
    return ranking_from_heat(h)


def _baseline_tensor(model: Model, view: Image.Image, baseline: str, polarity: str = "auto") -> torch.Tensor:
    """The normalised tensor of the baseline picture, made in pixel space from the model view."""
    rgb = view.convert("RGB")
    # Every baseline picture is read the way the picture itself was (a masked digit must not
    # switch polarity half-way along a curve).
    reading = model.preprocess.read(view, polarity)
    if baseline == "zero":
        # Black as the *model* sees it: for a picture the model flips, that is a white picture.
        colour = (255, 255, 255) if model.preprocess.flips(reading) else (0, 0, 0)
        pic = Image.new("RGB", rgb.size, colour)
    elif baseline == "mean":
        mean = np.asarray(rgb, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        pic = Image.new("RGB", rgb.size, tuple(int(v) for v in np.rint(mean)))
    elif baseline == "blur":
        sigma = max(1.0, BLUR_SIGMA_FRACTION * max(rgb.size))
        pic = rgb.filter(ImageFilter.GaussianBlur(radius=sigma))
    else:  # pragma: no cover - validated by the caller
        raise ExplainError(f"Unknown baseline {baseline!r}: use one of {', '.join(BASELINES)}.")
    return model.preprocess.to_tensor(pic, reading).to(model.device)


__all__ = [
    "BASELINES",
    "DELETION_BASELINE",
    "INSERTION_BASELINE",
    "MODES",
    "FaithfulnessResult",
    "MethodComparison",
    "RANDOM_KEY",
    "compare_methods",
    "deletion_insertion",
    "plain_reading",
    "random_ranking",
    "ranking_from_heat",
]
