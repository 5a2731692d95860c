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
    * ``params``: the options it takes (:class:`Param`), passed as ``options={...}``;
    * ``supports_contrast``: can explain "A rather than B" (``contrast=B``: the map of ``y_A − y_B``);
    * ``signed``: raw maps keep their sign (negative = evidence against); display maps show the
      positive part only, scaled to ``clip_percentile`` of it (see ``Explanation.heatmaps``).
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
    #: The maps need only the activation and the batch's per-picture gradients, so an audit can
    #: compute them for a whole batch at once; False: the method needs its picture's own graph
    #: (e.g. weighted rows of one backward, or re-running the layers above), done picture by picture.
    batchable: ClassVar[bool] = True
    #: How a caption reads the map: "the highlighted region" (a layer map) or "the bright pixels".
    region_phrase: ClassVar[str] = "the highlighted region"
    supports_contrast: ClassVar[bool] = False
    signed: ClassVar[bool] = False

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

    @staticmethod
    def class_gradients(cap: Capture, classes: Sequence[int], contrast: int | None = None) -> torch.Tensor:
        """``d y_k / dA`` per class, or ``d (y_k − y_B) / dA`` with ``contrast=B``: ``[K, C, h, w]``.

        The contrast class is one more row of the same batched backward; by linearity its gradient
        is subtracted from each target's (cached per class, so a contrast costs nothing again).
        """
        if contrast is None:
            return cap.gradients(classes)
        g = cap.gradients([*classes, contrast])
        return g[:-1] - g[-1:]

    def maps(
        self,
        model: Model,
        cap: Capture,
        classes: Sequence[int],
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
        options: dict[str, float | int] | None = None,
        contrast: int | None = None,
    ) -> torch.Tensor:
        """Raw (unnormalised) maps ``[K, h, w]`` for the classes (of ``y_k − y_contrast`` if given)."""
        grads = self.class_gradients(cap, classes, contrast) if self.needs_gradients else None
        return self.combine(self.weights(model, cap, classes, grads), cap)

    @staticmethod
    def combine(w: torch.Tensor, cap: Capture) -> torch.Tensor:
        """``ReLU(sum_c w_c A_c)`` for ``[K, C]`` or per-location ``[K, C, h, w]`` weights."""
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
    supports_contrast = True

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
        w = self.weights(model, cap, classes, None)
        if contrast is not None:
            # "A rather than B" is exactly the difference of two rows of the linear layer.
            w = w - model.submodule(cap.layer.cam_linear).weight.detach()[contrast]
        return self.combine(w, cap)

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

    supports_contrast = True

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

    supports_contrast = True

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

    supports_contrast = True

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

    supports_contrast = True

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

    supports_contrast = True

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

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
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
    supports_contrast = True

    def reading(self, score: str) -> str:
        return f"{self.region_phrase} are those whose change would move {score} the most."

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
        return self.class_gradients(cap, classes, contrast).abs().amax(dim=1).float()


def _one_hot_rows(n: int, classes: Sequence[int], contrast: int | None, device: torch.device) -> torch.Tensor:
    """``[K, N]`` output rows: +1 at each class (and −1 at ``contrast``: "A rather than B")."""
    rows = torch.zeros(len(classes), n, device=device)
    rows[torch.arange(len(classes)), torch.tensor(list(classes))] = 1.0
    if contrast is not None:
        rows[:, contrast] -= 1.0
    return rows


def _input_gradients(model: Model, batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``d (rows · logits) / d input`` for every row and every picture of ``batch``: ``[K, B, C, H, W]``.

    One forward of the batch and one batched backward for all rows (one per row where an op has no
    batching rule). Only the input requires grad; the frozen model is not touched.
    """
    x = batch.detach().requires_grad_(True)
    logits = model.logits_with_grad(x)
    outs = rows.to(logits.dtype)[:, None, :].expand(rows.shape[0], x.shape[0], rows.shape[1])
    try:
        (g,) = torch.autograd.grad(logits, x, grad_outputs=outs, is_grads_batched=True, retain_graph=False)
        return g
    except RuntimeError:
        return torch.stack([
            torch.autograd.grad(logits, x, grad_outputs=o, retain_graph=True)[0] for o in outs
        ])


def _request_key(name: str, classes: Sequence[int], opts: dict, contrast: int | None) -> str:
    """Key of one request's maps in ``Capture.extras`` (maps of the input that many passes made)."""
    return f"{name}:{tuple(classes)}:{tuple(sorted(opts.items()))}:{contrast}"


def _batches(total: int, size: int) -> list[range]:
    return [range(s, min(total, s + size)) for s in range(0, total, size)]


class FinerCAM(Method):
    """Finer-CAM — Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for
    Visual Explanation", CVPR 2025.

    Grad-CAM of a score that sets the target ``t`` against the ``J = 3`` classes whose logits are
    nearest its own (the classes most easily confused with it), weighted by their probabilities:

        ``s = sum_j p_j (y_t − α y_j) / sum_j p_j``,   ``w_c = mean_ij ds / dA_c``

    (the softmax weights ``p_j`` are differentiated too). The same definition as pytorch-grad-cam
    1.5.7's ``FinerCAM`` with its ``GradCAM`` base; ``alpha`` defaults to 1 as there (TorchCAM uses
    0.6; 0 gives plain Grad-CAM). Cost: as Grad-CAM — ``ds/dy`` is one row of the same batched
    backward through the head.
    """

    name, title = "finercam", "Finer-CAM"
    batchable = False
    aliases = ("finer-cam", "finer")
    summary = "What sets the class apart from the few classes the model most nearly confuses it with."
    compared = 3
    params = (
        Param("alpha", "Comparison strength α", 1.0, 0.0, 2.0, 0.05,
              help="How much of the similar classes' scores is subtracted: 0 is plain Grad-CAM, 1 the full difference."),
    )

    def comparison_classes(self, logits: torch.Tensor, target: int) -> list[int]:
        """The classes whose logits are nearest ``target``'s (not ``target`` itself), nearest first."""
        d = (logits - logits[target]).abs()
        d[target] = -1.0  # the target sorts first, and is then left out
        order = torch.argsort(d)
        return [int(i) for i in order[1 : 1 + min(self.compared, logits.numel() - 1)]]

    def score_rows(self, cap: Capture, classes: Sequence[int], alpha: float) -> torch.Tensor:
        """``[K, N]``: ``ds_k / dy``, the output row whose backward gives Finer-CAM's gradient."""
        z0 = cap.logits.detach()[0].float()
        rows = []
        for t in classes:
            z = z0.clone().requires_grad_(True)
            p = torch.softmax(z, dim=0)
            comp = self.comparison_classes(z0, t)
            score = sum(p[j] * (z[t] - alpha * z[j]) for j in comp) / (sum(p[j] for j in comp) + 1e-9)
            (row,) = torch.autograd.grad(score, z)
            rows.append(row)
        return torch.stack(rows)

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
        alpha = float((options or {}).get("alpha", self.params[0].default))
        grads = cap.row_gradients(self.score_rows(cap, classes, alpha))
        return self.combine(grads.mean(dim=(2, 3)), cap)


class EigenCAM(Method):
    """Eigen-CAM — Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020.

    The activation's locations as rows (``[h·w, C]``), centred per channel; the map is their
    projection on the first principal component (first right singular vector ``v_1``):
    ``map = ReLU(reshape((A − mean) v_1))``. No gradients and not class-specific: the same map for
    every class. The sign of ``v_1`` is arbitrary (pytorch-grad-cam leaves it so, and its users
    report inverted maps); here it is fixed so that the projection correlates positively with the
    activation's mean over channels. Cost: one SVD of the activation, no backward pass.
    """

    name, title = "eigencam", "Eigen-CAM"
    aliases = ("eigen-cam", "eigen")
    summary = "The main pattern in the layer's features, whatever the class: the same map for every class."
    needs_gradients = False
    class_specific = False

    def reading(self, score: str) -> str:
        return f"{self.region_phrase} is where the layer's strongest shared pattern lies (the same for every class)."

    @staticmethod
    def projection(activation: torch.Tensor) -> torch.Tensor:
        """The signed ``[h, w]`` projection on the first principal component, sign fixed."""
        a = torch.nan_to_num(activation.float())
        flat = a.flatten(1).T  # [h*w, C]
        flat = flat - flat.mean(dim=0, keepdim=True)
        _u, _s, vh = torch.linalg.svd(flat, full_matrices=False)
        proj = flat @ vh[0]
        mean = a.mean(dim=0).flatten()
        if float(((proj - proj.mean()) * (mean - mean.mean())).sum()) < 0:
            proj = -proj
        return proj.view(a.shape[1:])

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
        proj = cap.extras.get(self.name)
        if proj is None:
            proj = self.projection(cap.activation)
            cap.set_extra(self.name, proj)
        return F.relu(proj).expand(len(classes), *proj.shape).clone()


class AblationCAM(Method):
    """Ablation-CAM — Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020.

    A channel's weight is the relative drop of the class score when that channel is zeroed:
    ``w_kc = (y_k − y_k^(A_c = 0)) / y_k``, ``map = ReLU(sum_c w_kc A_c)`` (pytorch-grad-cam's
    ``AblationCAM``; it zeroes post-ReLU layers as here). Cost: one pass of the network *above*
    the layer per channel, in batches — the model is split at the layer with ``torch.fx``
    (:mod:`explain.split`), so the layers below are never run again; where it does not trace, full
    forward passes with the layer's output replaced (a notice says so). The ablated scores of all
    classes are kept with the capture, so another class costs nothing.
    """

    name, title = "ablationcam", "Ablation-CAM"
    batchable = False
    aliases = ("ablation-cam", "ablation")
    summary = "Switches each feature map off in turn and weighs it by how much the class score drops: slow."
    needs_gradients = False
    slow = True
    batch_size = 256  # ablated copies per pass of the part above the layer (capped by memory)
    full_batch_size = 32  # per full forward pass, in the fallback
    memory_budget = 128 * 2**20

    @staticmethod
    def notice_key() -> str:
        return "notice:" + AblationCAM.name

    def ablated_logits(self, model: Model, cap: Capture, progress: Progress | None, cancel: CancelCheck | None) -> torch.Tensor:
        """Logits ``[C, N]`` of every class with each channel of the layer zeroed in turn (cached)."""
        cached = cap.extras.get(self.name)
        if cached is not None:
            return cached  # type: ignore[return-value]
        from . import split  # imports torch.fx; only needed here

        out = cap.layer_output  # [1, ...] in the layer's own layout
        ch_dim = 1 if cap.layer.layout == "nchw" else out.dim() - 1
        channels = out.shape[ch_dim]
        upper, why = split.upper(model, cap.layer_name)
        if upper is None:
            cap.set_extra(self.notice_key(), f"Ablation-CAM ran the whole network for each channel ({why}).")
            size = self.full_batch_size
        else:
            size = max(1, min(self.batch_size, self.memory_budget // max(1, out.numel() * out.element_size())))
        parts = []
        chunks = _batches(channels, size)
        for done, idx in enumerate(chunks, 1):
            if cancel is not None and cancel():
                raise Cancelled("Ablation-CAM was cancelled.")
            n = len(idx)
            batch = out.repeat(n, *([1] * (out.dim() - 1)))
            batch.movedim(ch_dim, 1)[torch.arange(n), torch.tensor(list(idx))] = 0.0
            if upper is not None:
                from .model import FORWARD_GATE

                with torch.no_grad(), FORWARD_GATE.shared():
                    logits = upper(batch)
                model.stats.add(forward_passes=1)
            else:
                inputs = cap.input.repeat(n, *([1] * (cap.input.dim() - 1)))
                logits = model.forward_replacing(inputs, cap.layer_name, lambda _o, b=batch: b)
            parts.append(logits.float())
            if progress is not None:
                progress(done, len(chunks))
        scores = torch.cat(parts)
        cap.set_extra(self.name, scores)
        return scores

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
        ablated = self.ablated_logits(model, cap, progress, cancel)[:, list(classes)].T  # [K, C]
        y = cap.logits.detach()[0].float()[list(classes)][:, None]
        y = torch.where(y.abs() > _EPS, y, torch.full_like(y, _EPS))
        return self.combine((y - ablated) / y, cap)


class SmoothGrad(Method):
    """SmoothGrad — Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.

    The saliency map averaged over ``n`` noisy copies of the input:
    ``map = max_colour  1/n sum_i |dy_k / dx (x + ε_i)|``, ``ε_i ~ N(0, σ²)`` with
    ``σ = noise · (max x − min x)`` (the paper's 10–20 %; absolute gradients as Captum's
    ``NoiseTunnel(Saliency)``). The noise comes from a generator seeded by ``seed``, so the same
    request gives the same map. Cost: ``n`` forward and backward passes of the whole network, in
    batches (all classes in one batched backward per batch).
    """

    name, title = "smoothgrad", "SmoothGrad"
    aliases = ("smooth-grad", "smoothgradient")
    summary = "Input gradients averaged over noisy copies of the picture: a calmer saliency map."
    on_input = True
    slow = True
    clip_percentile = 99.0
    region_phrase = "the bright pixels"
    supports_contrast = True
    batch_size = 8
    params = (
        Param("noise", "Noise level (σ as a share of the value range)", 0.15, 0.0, 1.0, 0.01,
              help="Standard deviation of the added noise; the paper finds 10–20% best."),
        Param("samples", "Noisy copies", 16, 1, 200, 1, integer=True,
              help="More copies give a smoother map and cost one forward and backward pass each."),
        Param("seed", "Noise seed", 0, 0, 2**31 - 1, 1, integer=True,
              help="The same seed gives the same noise, so the same map."),
    )

    def reading(self, score: str) -> str:
        return f"{self.region_phrase} are those whose change would move {score} the most, even under noise."

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
        opts = self.options(options)
        key = _request_key(self.name, classes, opts, contrast)
        if key in cap.extras:  # e.g. the same input map in every row of the methods × layers grid
            return cap.extras[key].clone()  # type: ignore[union-attr]
        x = cap.input.detach()
        n = int(opts["samples"])
        sigma = float(opts["noise"]) * float(x.max() - x.min())
        gen = torch.Generator(device="cpu").manual_seed(int(opts["seed"]))
        noise = (torch.randn((n, *x.shape[1:]), generator=gen) * sigma).to(x.device, x.dtype)
        rows = _one_hot_rows(model.num_classes, classes, contrast, x.device)
        total = torch.zeros(len(classes), *x.shape[1:], device=x.device)
        chunks = _batches(n, self.batch_size)
        for done, idx in enumerate(chunks, 1):
            if cancel is not None and cancel():
                raise Cancelled("SmoothGrad was cancelled.")
            g = _input_gradients(model, x + noise[idx.start : idx.stop], rows)
            total += g.abs().sum(dim=1)
            if progress is not None:
                progress(done, len(chunks))
        maps = (total / n).amax(dim=1).float()
        cap.set_extra(key, maps)
        return maps.clone()


class IntegratedGradients(Method):
    """Integrated Gradients — Sundararajan et al., "Axiomatic Attribution for Deep Networks",
    ICML 2017.

    ``attr = (x − x') ⊙ ∫_0^1 dy_k/dx (x' + a (x − x')) da`` with a black picture as the baseline
    ``x'``, the integral by Gauss–Legendre quadrature with ``steps`` nodes (Captum's default rule).
    ``map = sum_colour attr``, *signed* (negative pixels speak against the class). Completeness:
    the map sums to ``y(x) − y(x')``. Cost: ``steps`` forward and backward passes of the whole
    network, in batches (all classes in one batched backward per batch).
    """

    name, title = "integrated-gradients", "Integrated Gradients"
    aliases = ("ig", "integrated-gradient", "intgrad")
    summary = "Each pixel's share of the score, added up along a fade from a black picture to this one."
    on_input = True
    slow = True
    signed = True
    clip_percentile = 99.0
    region_phrase = "the bright pixels"
    supports_contrast = True
    batch_size = 8
    params = (
        Param("steps", "Steps", 32, 2, 256, 1, integer=True,
              help="Points on the path from the black picture; more are more exact and cost one pass each."),
    )

    def reading(self, score: str) -> str:
        return f"{self.region_phrase} are the pixels that add the most to {score}, compared with a black picture."

    @staticmethod
    def baseline(model: Model, like: torch.Tensor) -> torch.Tensor:
        """The black picture, normalised as the model's input."""
        from PIL import Image

        h, w = like.shape[-2:]
        black = Image.new("RGB", (int(w), int(h)), (0, 0, 0))
        return model.preprocess.to_tensor(black).to(like.device, like.dtype)

    @staticmethod
    def quadrature(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss–Legendre nodes on [0, 1] and their weights (as Captum's ``gausslegendre``)."""
        import numpy as np

        nodes, weights = np.polynomial.legendre.leggauss(int(steps))
        return torch.tensor(0.5 * (nodes + 1)), torch.tensor(0.5 * weights)

    def maps(self, model, cap, classes, progress=None, cancel=None, options=None, contrast=None):
        opts = self.options(options)
        key = _request_key(self.name, classes, opts, contrast)
        if key in cap.extras:
            return cap.extras[key].clone()  # type: ignore[union-attr]
        x = cap.input.detach()
        base = self.baseline(model, x)
        alphas, weights = self.quadrature(int(opts["steps"]))
        alphas, weights = alphas.to(x.device, x.dtype), weights.to(x.device, x.dtype)
        rows = _one_hot_rows(model.num_classes, classes, contrast, x.device)
        total = torch.zeros(len(classes), *x.shape[1:], device=x.device)
        chunks = _batches(len(alphas), self.batch_size)
        for done, idx in enumerate(chunks, 1):
            if cancel is not None and cancel():
                raise Cancelled("Integrated Gradients was cancelled.")
            a = alphas[idx.start : idx.stop]
            path = base + a[:, None, None, None] * (x - base)
            g = _input_gradients(model, path, rows)  # [K, B, C, H, W]
            total += (g * weights[idx.start : idx.stop][None, :, None, None, None]).sum(dim=1)
            if progress is not None:
                progress(done, len(chunks))
        maps = ((x - base) * total).sum(dim=1).float()
        cap.set_extra(key, maps)
        return maps.clone()


_ALL: tuple[Method, ...] = (
    CAM(), GradCAM(), GradCAMPlusPlus(), XGradCAM(), LayerCAM(), HiResCAM(), ScoreCAM(), Saliency(),
    FinerCAM(), EigenCAM(), AblationCAM(), SmoothGrad(), IntegratedGradients(),
)
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
