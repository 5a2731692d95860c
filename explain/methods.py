"""The CAM family: one base, each method says only how channels are weighted.

For a target layer with activation ``A`` (``[C, h, w]``) and, per class, the gradient ``G`` of that
class's logit with respect to ``A`` (``[K, C, h, w]``, from one batched backward pass), a map is

    map_k = ReLU( sum_c  w_kc * A_c )          (w_kc a number per channel, or per location)

and the methods differ only in ``w``. Score-CAM replaces gradients by masked forward passes and
saliency is the gradient with respect to the input pixels themselves.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import Cancelled, MethodNotApplicableError, UnknownMethodError
from .model import INPUT_LAYER, Capture, Model

Progress = Callable[[int, int], None]
CancelCheck = Callable[[], bool]

_EPS = 1e-7


class Method:
    """Base: ``ReLU(sum_c weights * A)``. Subclasses override :meth:`weights`."""

    name = ""
    title = ""
    needs_gradients = True
    input_layer = False  # True: works on the input pixels, not on a layer

    def check(self, model: Model, layer: str) -> None:
        """Raise :class:`MethodNotApplicableError` if the method cannot run on this model/layer."""

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


class CAM(Method):
    name, title = "cam", "CAM"
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
    name, title = "gradcam", "Grad-CAM"

    def weights(self, model, cap, classes, grads):
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(Method):
    name, title = "gradcam++", "Grad-CAM++"

    def weights(self, model, cap, classes, grads):
        g2 = grads.pow(2)
        g3 = g2 * grads
        sum_a = cap.activation.sum(dim=(1, 2))[None, :, None, None]
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


class XGradCAM(Method):
    name, title = "xgradcam", "XGrad-CAM"

    def weights(self, model, cap, classes, grads):
        a = cap.activation
        return (grads * a.unsqueeze(0)).sum(dim=(2, 3)) / (a.sum(dim=(1, 2)).unsqueeze(0) + _EPS)


class LayerCAM(Method):
    name, title = "layercam", "LayerCAM"

    def weights(self, model, cap, classes, grads):
        return F.relu(grads)


class HiResCAM(Method):
    name, title = "hirescam", "HiResCAM"

    def weights(self, model, cap, classes, grads):
        return grads


class ScoreCAM(Method):
    """Each channel, upsampled and scaled to [0, 1], masks the input; its weight is the class
    probability of the masked picture. The masked passes serve every class at once and are kept."""

    name, title = "scorecam", "Score-CAM"
    needs_gradients = False
    batch_size = 32

    def weights(self, model, cap, classes, grads):  # pragma: no cover - maps() is overridden
        raise NotImplementedError

    def channel_scores(self, model: Model, cap: Capture, progress: Progress | None, cancel: CancelCheck | None) -> torch.Tensor:
        """Probabilities ``[C, N]`` of every class for the input masked by each channel."""
        cached = cap.extras.get("scorecam")
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
        cap.extras["scorecam"] = scores
        return scores

    def maps(self, model, cap, classes, progress=None, cancel=None):
        scores = self.channel_scores(model, cap, progress, cancel)
        w = scores[:, list(classes)].T  # [K, C]
        return F.relu(torch.einsum("kc,chw->khw", w, cap.activation.float()))


class Saliency(Method):
    """Input gradients (Simonyan et al., 2014): |d score / d pixel|, largest over colour channels."""

    name, title = "saliency", "Saliency (input gradients)"
    input_layer = True

    def maps(self, model, cap, classes, progress=None, cancel=None):
        return cap.gradients(classes).abs().amax(dim=1).float()


_ALL = [CAM(), GradCAM(), GradCAMPlusPlus(), XGradCAM(), LayerCAM(), HiResCAM(), ScoreCAM(), Saliency()]
REGISTRY: dict[str, Method] = {m.name: m for m in _ALL}
METHODS: tuple[str, ...] = tuple(REGISTRY)
TITLES: dict[str, str] = {m.name: m.title for m in _ALL}


def get_method(name: str) -> Method:
    """Look a method up by name (case-insensitive; ``grad-cam`` spelling accepted)."""
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    for m in _ALL:
        if m.name.replace("-", "") == key:
            return m
    raise UnknownMethodError(f"Unknown method {name!r}: use one of {', '.join(METHODS)}.")


def layer_for(method: Method, layer: str | None, model: Model) -> str:
    """The capture layer a method works on."""
    if method.input_layer:
        return INPUT_LAYER
    return model.layer_info(layer).name
