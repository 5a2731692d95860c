"""The numbers behind a step-by-step lesson on CAM and Grad-CAM.

A class activation map is built in four steps, and :func:`walkthrough` returns every intermediate
result so that a page can show them one at a time:

1. the target layer's feature maps ``A_k`` (``[C, h, w]``), one per channel;
2. one weight ``w_k`` per channel: for **CAM** the row ``W[c, k]`` of the final linear layer, for
   **Grad-CAM** the gradient of the class's logit with respect to ``A_k``, averaged over ``h × w``;
3. the weighted sum ``Σ_k w_k A_k`` over *all* channels (it may be negative), then a ReLU;
4. bilinear upsampling to the picture's size and min–max scaling to [0, 1].

Why CAM needs global average pooling followed by one linear layer: the logit is then
``Σ_k W[c,k]·mean(A_k) + b``, and because the mean is linear that is exactly
``mean(Σ_k W[c,k]·A_k) + b`` — the spatial mean of the (pre-ReLU) CAM map plus the bias. The map
therefore distributes the logit over the picture. On such a head the Grad-CAM weights are the same
numbers divided by ``h·w`` (the gradient of a mean), so Grad-CAM generalises CAM to any head.

Only the engine's public API is used, so the lesson reuses the capture an explanation of the same
picture and layer already made (no extra forward pass), and the shared model is only read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import render
from .errors import ExplainError, UnknownMethodError
from .methods import CAM, GradCAM, get_method
from .model import Model
from .preprocess import Fit
from .progress import check_image_and_fit

#: The methods the walkthrough teaches: CAM, then Grad-CAM (one number per channel, both).
TEACH_CAM, TEACH_GRADCAM = CAM.name, GradCAM.name
TEACH_METHODS: tuple[str, ...] = (TEACH_CAM, TEACH_GRADCAM)

# Relative tolerance for "the averaged gradients equal W[c]/(h·w)": both are float32 numbers that
# differ only by the rounding of the backward pass through the pooling.
_GRAD_MATCH_RTOL = 1e-3


@dataclass(frozen=True)
class Walkthrough:
    """Every intermediate number of one CAM or Grad-CAM map, for a lesson.

    Channel arrays of length ``n`` are sorted by the channel's *contribution*, largest
    ``|w_k · mean(A_k)|`` first: the amount the channel adds to (or, if negative, takes from) the
    spatial mean of the weighted sum. For CAM that is exactly its share of the logit.
    """

    model_name: str
    method: str  # one of TEACH_METHODS
    layer: str
    layer_shape: tuple[int, int, int]  # (C, h, w)
    cls: int
    class_name: str
    prob: float  # softmax probability of the class
    logit: float  # the model's own logit of the class
    image: Image.Image  # the picture as the model saw it
    # Step 1–2: the n channels that matter most.
    channel_indices: list[int]
    activation_top: np.ndarray  # [n, h, w] feature maps A_k of those channels
    channel_weights: np.ndarray  # [n] their weights w_k
    channel_means: np.ndarray  # [n] their spatial means mean(A_k)
    channel_contributions: np.ndarray  # [n] w_k · mean(A_k), signed
    contribution_share: float  # fraction of the total positive contribution the n channels carry
    # All channels.
    all_weights: np.ndarray  # [C]
    all_contributions: np.ndarray  # [C]
    # Step 3–4: the map.
    weighted_sum: np.ndarray  # [h, w] Σ_k w_k A_k over all channels, before the ReLU
    relu: np.ndarray  # [h, w] the raw map (equals explain()'s map of the same method)
    upsampled: np.ndarray  # [H, W] in [0, 1], bilinear to the model view, per-map normalised
    # The head, where the layer is followed by global average pooling + one linear layer (else None).
    bias: float | None = None  # b[c] of that linear layer
    gap_logit: float | None = None  # Σ_k W[c,k]·mean(A_k) + b: pooling first, then the linear layer
    cam_mean_plus_bias: float | None = None  # mean(Σ_k W[c,k]·A_k) + b: the CAM map first, then its mean
    cam_weights_scaled: np.ndarray | None = None  # [C] W[c]/(h·w), what Grad-CAM's weights should be
    gradcam_equals_cam_scaled: bool | None = None  # Grad-CAM only: averaged gradients == W[c]/(h·w)

    @property
    def logit_gap(self) -> float | None:
        """|CAM mean + bias − the model's logit| (≈ 0 where CAM is exact), or ``None``."""
        if self.cam_mean_plus_bias is None:
            return None
        return abs(self.cam_mean_plus_bias - self.logit)


def walkthrough(
    model: Model,
    image: Image.Image,
    cls: int | str,
    *,
    layer: str | None = None,
    method: str = TEACH_GRADCAM,
    top_channels: int = 4,
    fit: Fit = "squash",
    polarity: str = "auto",
) -> Walkthrough:
    """Compute the lesson's numbers for class ``cls`` of ``image`` at ``layer`` (default layer).

    ``method`` is one of :data:`TEACH_METHODS` (CAM or Grad-CAM). CAM on a layer that is not followed by global average
    pooling + one linear layer raises :class:`~explain.MethodNotApplicableError` saying why (the
    page can then fall back to Grad-CAM). The capture is the model's cached one, so after
    ``explain()`` of the same picture and layer no forward pass runs.
    """
    check_image_and_fit(image, fit, "walkthrough")
    name = get_method(method).name
    if name not in TEACH_METHODS:
        raise UnknownMethodError(
            f"The walkthrough explains {' and '.join(TEACH_METHODS)} only, not {method!r}: the other "
            "methods weight channels in ways that do not reduce to one number per channel."
        )
    if isinstance(top_channels, bool) or not isinstance(top_channels, (int, np.integer)) or top_channels < 1:
        raise ExplainError(f"top_channels must be a positive whole number, not {top_channels!r}.")
    info = model.layer_info(layer)
    if name == TEACH_CAM:
        get_method(TEACH_CAM).check(model, info.name)
    c = model.class_index(cls)

    view, x = model.view_and_tensor(image, fit, polarity)  # greyscale: read as explain() reads it
    cap = model.capture(x, info.name)
    # The map is computed on the model's device with explain.methods' own operations, so that
    # `relu` is explain()'s map to the last bit; everything is handed out as CPU numpy.
    a_dev = cap.activation.detach().float()  # [C, h, w]
    n_ch, h, w = a_dev.shape
    head_w: torch.Tensor | None = None
    head_b: float | None = None
    if info.cam_linear is not None:
        linear = dict(model.module.named_modules())[info.cam_linear]
        head_w = linear.weight.detach()[[c]].float()  # [1, C]; read only: the module is shared
        head_b = float(linear.bias.detach()[c]) if linear.bias is not None else 0.0
    if name == TEACH_CAM:
        assert head_w is not None  # check() guarantees a CAM head
        w_dev = head_w
    else:
        w_dev = cap.gradients([c]).mean(dim=(2, 3)).float()  # [1, C]
    weighted = torch.einsum("kc,chw->khw", w_dev, a_dev)[0].cpu()
    relu = torch.relu(weighted)

    a = a_dev.cpu()
    weights = w_dev[0].cpu()
    logits = cap.logits.detach()[0].float().cpu()
    means = a.mean(dim=(1, 2))
    contributions = weights * means
    k = min(int(top_channels), n_ch)
    order = torch.argsort(contributions.abs(), descending=True, stable=True)[:k]
    positive = contributions.clamp(min=0)
    total_pos = float(positive.sum())
    share = float(positive[order].sum()) / total_pos if total_pos > 0 else 0.0

    width, height = view.size
    upsampled = render.heatmaps(relu[None], (height, width), "per_map")[0]

    gap_logit = cam_mean_plus_bias = None
    scaled = None
    grad_match: bool | None = None
    if head_w is not None and head_b is not None:
        # float64 so that the check compares the model's arithmetic, not this one's rounding.
        a64 = a.double()
        w64 = head_w[0].cpu().double()
        gap_logit = float((w64 * a64.mean(dim=(1, 2))).sum()) + head_b
        cam_mean_plus_bias = float(torch.einsum("c,chw->hw", w64, a64).mean()) + head_b
        scaled = (head_w[0].cpu() / (h * w)).numpy()
        if name == TEACH_GRADCAM:
            tol = _GRAD_MATCH_RTOL * float(np.abs(scaled).max())
            grad_match = bool(np.allclose(weights.numpy(), scaled, rtol=_GRAD_MATCH_RTOL, atol=tol))

    return Walkthrough(
        model_name=model.name,
        method=name,
        layer=info.name,
        layer_shape=(int(n_ch), int(h), int(w)),
        cls=c,
        class_name=model.categories[c],
        prob=float(cap.probs[c]),
        logit=float(logits[c]),
        image=view,
        channel_indices=[int(i) for i in order],
        activation_top=a[order].numpy(),
        channel_weights=weights[order].numpy(),
        channel_means=means[order].numpy(),
        channel_contributions=contributions[order].numpy(),
        contribution_share=share,
        all_weights=weights.numpy(),
        all_contributions=contributions.numpy(),
        weighted_sum=weighted.numpy(),
        relu=relu.numpy(),
        upsampled=upsampled,
        bias=head_b,
        gap_logit=gap_logit,
        cam_mean_plus_bias=cam_mean_plus_bias,
        cam_weights_scaled=scaled,
        gradcam_equals_cam_scaled=grad_match,
    )
