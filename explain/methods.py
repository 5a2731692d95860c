"""The methods: each one class, and everything the UI and the CLI need to know about it.

For a target layer with activation ``A`` (``[C, h, w]``) and, per class, the gradient ``G`` of that
class's logit with respect to ``A`` (``[K, C, h, w]``, from one batched backward pass), a map is

    map_k = ReLU( sum_c  w_kc * A_c )          (w_kc a number per channel, or per location)

and the CAM-family methods differ only in ``w``. Score-CAM replaces gradients by masked forward
passes and saliency is the gradient with respect to the input pixels themselves.

Adding a method is adding one class here and one entry to :data:`_ALL`. Nothing outside this
module names a method: pages, the CLI and the report read the attributes of :class:`Method`
(``slow``, ``on_input``, ``clip_percentile``, ``class_specific``, ``params``, ``summary``…).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from .errors import Cancelled, ExplainError, MethodNotApplicableError, UnknownMethodError
from .model import INPUT_LAYER, Capture, Model
from .progress import CancelCheck, Progress

_EPS = 1e-7


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a method, declared so that a UI can draw a control for it."""

    name: str
    label: str
    default: float
    low: float
    high: float
    step: float
    help: str = ""
    integer: bool = False

    def check(self, value: object) -> float | int:
        """``value`` as this parameter's type, or a clear error when it is out of range."""
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ExplainError(f"Option {self.name!r} must be a number, not {value!r}.") from None
        if not self.low <= v <= self.high:
            raise ExplainError(f"Option {self.name!r} must be between {self.low:g} and {self.high:g}, not {v:g}.")
        return int(round(v)) if self.integer else v


class Method:
    """Base: ``ReLU(sum_c weights * A)``. Subclasses override :meth:`weights` (or :meth:`maps`).

    Class attributes describe the method to its callers:

    * ``name`` / ``title`` / ``aliases``: how it is looked up and shown;
    * ``summary``: one plain line on what its map shows, for non-experts;
    * ``needs_gradients``: takes the batched backward pass of the capture;
    * ``on_input``: works on the input pixels instead of a layer (the layer picker does not apply);
    * ``slow``: runs extra forward passes (callers show a progress bar and offer cancel);
    * ``class_specific``: the map depends on the class asked for;
    * ``clip_percentile``: display maps are scaled to this percentile (sparse maps) or None;
    * ``params``: the options it takes (:class:`Param`), passed as ``options={...}``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    on_input: ClassVar[bool] = False
    slow: ClassVar[bool] = False
    class_specific: ClassVar[bool] = True
    clip_percentile: ClassVar[float | None] = None
    params: ClassVar[tuple[Param, ...]] = ()
    #: How a caption reads the map: "the highlighted region" (a layer map) or "the bright pixels".
    region_phrase: ClassVar[str] = "the highlighted region"

    def check(self, model: Model, layer: str) -> None:
        """Raise :class:`MethodNotApplicableError` if the method cannot run on this model/layer."""

    def capture_layer(self, model: Model, layer: str | None) -> str:
        """The capture layer this method works on (the input pixels for ``on_input`` methods)."""
        return INPUT_LAYER if self.on_input else model.layer_info(layer).name

    def options(self, given: dict[str, object] | None) -> dict[str, float | int]:
        """The method's options: declared defaults, overridden by ``given`` (checked)."""
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise ExplainError(f"{self.title} has no option {', '.join(map(repr, unknown))} (options: {allowed}).")
        return {p.name: p.check(given.get(p.name, p.default)) for p in self.params}

    def reading(self, score: str) -> str:
        """The end of a caption: what the map says about ``score`` (e.g. "its score for 'tabby'")."""
        return f"{self.region_phrase} is what pushed {score} up the most."

    def weights(self, model: Model, cap: Capture, classes: Sequence[int], grads: torch.Tensor | None) -> torch.Tensor:
        """``[K, C]`` channel weights or ``[K, C, h, w]`` per-location weights."""
        raise NotImplementedError

    def maps(
        self,
        model: Model,
        cap: Capture,
        classes: Sequence[int],
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
        options: dict[str, float | int] | None = None,
    ) -> torch.Tensor:
        """Raw (unnormalised) maps ``[K, h, w]`` for the classes."""
        grads = cap.gradients(classes) if self.needs_gradients else None
        w = self.weights(model, cap, classes, grads)
        a = cap.activation.float()
        if w.dim() == 2:
            # One matrix product ([K, C] @ [C, h*w]): the fast path for many classes at once.
            cam = (w.float() @ a.flatten(1)).view(w.shape[0], *a.shape[1:])
        else:
            cam = (w.float() * a.unsqueeze(0)).sum(dim=1)
        return F.relu(cam)

    def __repr__(self) -> str:
        return f"<method {self.name}>"


class CAM(Method):
    """CAM — Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

    ``map_k = ReLU(sum_c W[k, c] * A_c)`` with ``W`` the weights of the one linear layer that follows
    global average pooling. Needs exactly that head (GAP + one linear layer after the target layer).
    Cost: no backward pass; one matrix product for any number of classes (all 1000 at once).
    """

    name, title = "cam", "CAM"
    summary = "The classifier's own weights for the class, laid over the last feature maps."
    needs_gradients = False

    def check(self, model: Model, layer: str) -> None:
        info = model.layer_info(layer)
        if info.cam_linear is None:
            raise MethodNotApplicableError(
                f"CAM does not apply to {model.name} at '{info.name}': it needs the layer to be followed "
                f"only by global average pooling and one linear layer, but {info.cam_reason}. "
                "Use Grad-CAM, which works with any head."
            )

    def weights(self, model, cap, classes, grads):
        linear = model.submodule(cap.layer.cam_linear)
        w = linear.weight.detach()
        # All classes in order (e.g. CAM for the whole label set): no gather copy of the matrix.
        return w if list(classes) == list(range(w.shape[0])) else w[list(classes)]


class GradCAM(Method):
    """Grad-CAM — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017.

    ``w_kc = mean_{i,j} dy_k / dA_c[i, j]``: each channel weighted by its average gradient.
    Cost: one forward pass (shared) and one batched backward through the head for all classes.
    """

    name, title = "gradcam", "Grad-CAM"
    aliases = ("grad-cam",)
    summary = "Feature maps weighted by how much, on average, they raise the class score."

    def weights(self, model, cap, classes, grads):
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(Method):
    """Grad-CAM++ — Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual
    Explanations for Deep Convolutional Networks", WACV 2018.

    ``alpha = G² / (2 G² + sum_{ij} A_c · G³)``, ``w_kc = sum_{ij} alpha · ReLU(G)`` (the closed
    form with exponential outputs). Better for several instances of a class. Cost: as Grad-CAM.
    """

    name, title = "gradcam++", "Grad-CAM++"
    aliases = ("gradcampp", "gradcamplusplus", "grad-cam++")
    summary = "Like Grad-CAM, but weighs each location's positive gradient: better with several objects."

    def weights(self, model, cap, classes, grads):
        g2 = grads.pow(2)
        g3 = g2 * grads
        sum_a = cap.activation.sum(dim=(1, 2))[None, :, None, None]
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


class XGradCAM(Method):
    """XGrad-CAM — Fu et al., "Axiom-based Grad-CAM", BMVC 2020.

    ``w_kc = sum_{ij} G · A_c / sum_{ij} A_c``: gradients weighted by the activation they act on.
    Cost: as Grad-CAM.
    """

    name, title = "xgradcam", "XGrad-CAM"
    aliases = ("xgrad-cam",)
    summary = "Grad-CAM with each gradient weighted by the activation it acts on."

    def weights(self, model, cap, classes, grads):
        a = cap.activation
        return (grads * a.unsqueeze(0)).sum(dim=(2, 3)) / (a.sum(dim=(1, 2)).unsqueeze(0) + _EPS)


class LayerCAM(Method):
    """LayerCAM — Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021.

    ``map = ReLU(sum_c ReLU(G_c) · A_c)``: a weight per location, so it stays sharp at early layers.
    Cost: as Grad-CAM.
    """

    name, title = "layercam", "LayerCAM"
    summary = "Positive gradients location by location: sharper maps, also at earlier layers."

    def weights(self, model, cap, classes, grads):
        return F.relu(grads)


class HiResCAM(Method):
    """HiResCAM — Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", 2020.

    ``map = ReLU(sum_c G_c ⊙ A_c)``: the gradient times the activation at each location, which for
    a GAP + linear head is exactly the contribution to the score. Cost: as Grad-CAM.
    """

    name, title = "hirescam", "HiResCAM"
    summary = "Gradient times activation at each location: each place's contribution to the score."

    def weights(self, model, cap, classes, grads):
        return grads


class ScoreCAM(Method):
    """Score-CAM — Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks", CVPR Workshops 2020.

    Each channel, upsampled and scaled to [0, 1], masks the input; its weight is the class
    probability of the masked picture: ``w_kc = softmax(f(x ⊙ norm(up(A_c))))_k``. No gradients.
    Cost: one forward pass per live channel (in batches); the masked passes serve every class at
    once and are kept with the capture.
    """

    name, title = "scorecam", "Score-CAM"
    aliases = ("score-cam",)
    summary = "Masks the picture with each feature map and keeps those that keep the class score: slow."
    needs_gradients = False
    slow = True
    batch_size = 32

    def weights(self, model, cap, classes, grads):  # pragma: no cover - maps() is overridden
        raise NotImplementedError

    def channel_scores(self, model: Model, cap: Capture, progress: Progress | None, cancel: CancelCheck | None) -> torch.Tensor:
        """Probabilities ``[C, N]`` of every class for the input masked by each channel."""
        cached = cap.extras.get(self.name)
        if cached is not None:
            return cached  # type: ignore[return-value]
        a = cap.activation.float()
        x = cap.input
        size = x.shape[-2:]
        flat = a.flatten(1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        live = (hi - lo) > _EPS
        scores = torch.empty(a.shape[0], model.num_classes, device=x.device)
        dead = (~live).nonzero().flatten()
        live_idx = live.nonzero().flatten()
        total = int(live_idx.numel()) + (1 if dead.numel() else 0)
        done = 0
        if dead.numel():
            # A constant channel scales to an all-zero mask; one pass on the blank input serves all.
            scores[dead] = model.predict(torch.zeros_like(x))[0]
            done += 1
        for start in range(0, live_idx.numel(), self.batch_size):
            if cancel is not None and cancel():
                raise Cancelled("Score-CAM was cancelled.")
            idx = live_idx[start : start + self.batch_size]
            m = a[idx].unsqueeze(1)
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            mn = m.flatten(1).min(dim=1).values[:, None, None, None]
            mx = m.flatten(1).max(dim=1).values[:, None, None, None]
            m = (m - mn) / (mx - mn + _EPS)
            scores[idx] = model.predict(x * m)
            done += idx.numel()
            if progress is not None:
                progress(done, total)
        cap.set_extra(self.name, scores)
        return scores

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None):
        scores = self.channel_scores(model, cap, progress, cancel)
        w = scores[:, list(classes)].T  # [K, C]
        return F.relu(torch.einsum("kc,chw->khw", w, cap.activation.float()))


class Saliency(Method):
    """Saliency — Simonyan et al., "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR Workshops 2014.

    ``map = max_colour |dy_k / dx|``: the input gradient. Sparse, so display maps are scaled to
    their 99th percentile (as in Smilkov et al., 2017). Cost: one forward and one batched backward
    through the whole network.
    """

    name, title = "saliency", "Saliency (input gradients)"
    aliases = ("vanilla", "inputgradients", "gradients")
    summary = "The pixels whose change would move the class score the most (input gradients)."
    on_input = True
    clip_percentile = 99.0
    region_phrase = "the bright pixels"

    def reading(self, score: str) -> str:
        return f"{self.region_phrase} are those whose change would move {score} the most."

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None):
        return cap.gradients(classes).abs().amax(dim=1).float()


_ALL: tuple[Method, ...] = (CAM(), GradCAM(), GradCAMPlusPlus(), XGradCAM(), LayerCAM(), HiResCAM(), ScoreCAM(), Saliency())
_BY_NAME: dict[str, Method] = {m.name: m for m in _ALL}
TITLES: dict[str, str] = {m.name: m.title for m in _ALL}  # kept in step by register()/unregister()
DEFAULT_METHOD: str = GradCAM.name
#: Methods shown first where a page compares several (by class, so renaming one is one edit).
DEFAULT_GRID: tuple[str, ...] = (GradCAM.name, GradCAMPlusPlus.name, CAM.name, LayerCAM.name)
DEFAULT_FAITHFULNESS: tuple[str, ...] = (GradCAM.name, GradCAMPlusPlus.name, LayerCAM.name, Saliency.name)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def register(method: Method) -> Method:
    """Add a method to the registry (e.g. a plug-in or a test's throw-away method); returns it."""
    if method.name in _BY_NAME:
        raise ExplainError(f"A method named {method.name!r} is registered already.")
    _BY_NAME[method.name] = method
    TITLES[method.name] = method.title
    return method


def unregister(name: str) -> None:
    """Remove a method added with :func:`register`."""
    _BY_NAME.pop(name, None)
    TITLES.pop(name, None)


def all_methods() -> tuple[Method, ...]:
    """Every registered method, in the order pickers show them."""
    return tuple(_BY_NAME.values())


def method_names() -> tuple[str, ...]:
    """Names of every registered method."""
    return tuple(_BY_NAME)


def __getattr__(name: str) -> object:
    # ``METHODS`` is computed on access, so that it includes methods registered later.
    if name == "METHODS":
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_method(name: str | Method) -> Method:
    """Look a method up by name (case-insensitive; ``grad-cam``, ``GradCAM++``, aliases accepted)."""
    if isinstance(name, Method):
        return name
    key = _key(str(name))
    for m in _BY_NAME.values():
        if key == _key(m.name) or key in {_key(a) for a in m.aliases}:
            return m
    raise UnknownMethodError(f"Unknown method {name!r}: use one of {', '.join(_BY_NAME)}.")
