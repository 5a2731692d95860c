"""Learn: CAM, then Grad-CAM, built step by step on the current image and class with live numbers.

Every number comes from ``explain.teach.walkthrough``, which reuses the model's cached forward
pass and only reads the shared model. Where CAM does not apply (the layer is not followed by
global average pooling and one linear layer, as in VGG), the page says why and teaches Grad-CAM only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

import explain
from explain import Walkthrough, walkthrough
from ui import compute, page, pictures, resources, state, text

TOP_CHANNELS = 4
LATEX_TERMS = 3  # terms of the weighted sum written out with their numbers
TILE = 224  # px: one feature-map picture, drawn at the model view's size and fitted to its column
SIGNED_COLORMAP = "RdBu_r"  # blue below zero, red above: the weighted sum has both signs

INTRO = """
A class activation map answers *"where in the picture is the evidence for this class?"* in four steps:

1. take the **feature maps** $A^k$ of a late layer: one small grid of numbers per channel;
2. give every channel one **weight** $w_k^c$: how much that channel counts for class $c$;
3. add the feature maps up with those weights and keep the positive part (**ReLU**);
4. **upsample** the small grid to the size of the picture and lay it over the picture.

CAM and Grad-CAM differ only in step 2: where the weights come from.
"""

WHY_GAP = """
**Why CAM needs global average pooling followed by one linear layer.** Then the class score is a
weighted sum of channel *averages*, and an average of a sum is the sum of the averages, so the two
can swap places:
"""

WHY_GRADCAM = """
**Why Grad-CAM does not need it.** Grad-CAM only asks *"if this channel grew a little, how much
would the score grow?"* — a gradient, which every differentiable network has, whatever comes after
the layer (several linear layers as in VGG, attention, anything). On a pooling + linear head that
gradient is exactly CAM's weight divided by $Z$, so Grad-CAM draws the same map; elsewhere it is a
local, first-order estimate rather than an exact split of the score.
"""


def _num(v: float) -> str:
    """A number for prose and formulas: three significant digits, no exponent for usual sizes."""
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.3g}"


def latex_sum(weights: Sequence[float], channels: Sequence[int], total: int, symbol: str, relu: bool) -> str:
    """The weighted sum with its first terms' live numbers, e.g. ``M^c = 0.162\\,A^{254} + … (1280 terms)``."""
    terms = []
    for i, (wk, k) in enumerate(zip(weights[:LATEX_TERMS], channels[:LATEX_TERMS])):
        sign = "-" if wk < 0 else ("+" if i else "")
        terms.append(rf"{sign} {_num(abs(wk))}\,A^{{{int(k)}}}")
    rest = total - len(terms)
    body = " ".join(terms) + (rf" + \dots \quad(\text{{{rest} more terms}})" if rest > 0 else "")
    return rf"{symbol} = \mathrm{{ReLU}}\Big({body}\Big)" if relu else rf"{symbol} = {body}"


def weights_table(wk: Walkthrough, weight_column: str) -> pd.DataFrame:
    """The top channels: index, weight, mean activation, contribution (weight × mean)."""
    return pd.DataFrame(
        {
            "Channel k": wk.channel_indices,
            weight_column: wk.channel_weights.astype(float),
            "Mean of A_k": wk.channel_means.astype(float),
            "Contribution w_k × mean(A_k)": wk.channel_contributions.astype(float),
        }
    )


def feature_maps(wk: Walkthrough) -> None:
    """Step 1: the top channels' feature maps on one shared colour scale, so sizes compare."""
    lo, hi = float(wk.activation_top.min()), float(wk.activation_top.max())
    cols = st.columns(max(len(wk.channel_indices), TOP_CHANNELS))
    for col, k, a, mean in zip(cols, wk.channel_indices, wk.activation_top, wk.channel_means):
        pictures.show(col, pictures.map_image(a, "viridis", lo=lo, hi=hi, size=TILE),
                      caption=f"channel {k} · mean {_num(mean)}")
    st.caption(f"One colour scale for these {len(wk.channel_indices)} maps: dark {_num(lo)}, yellow {_num(hi)}.")


def map_steps(wk: Walkthrough, sel: state.Selection, symbol: str) -> None:
    """Steps 3 and 4: the weighted sum (signed), the ReLU, the upsampled map and the overlay."""
    c, h, w = wk.layer_shape
    st.latex(latex_sum(wk.channel_weights, wk.channel_indices, c, symbol, relu=True))
    limit = float(np.abs(wk.weighted_sum).max()) or 1.0
    relu_hi = float(wk.relu.max())
    negative = float((wk.weighted_sum < 0).mean())
    size = wk.image.size
    cols = st.columns(4)
    # Four pictures of one size, so the eye follows the same grid from step to step.
    pictures.show(cols[0], pictures.map_image(wk.weighted_sum, SIGNED_COLORMAP, lo=-limit, hi=limit, size=size[0]),
                  caption=f"Weighted sum, {h}×{w}: {_num(wk.weighted_sum.min())} to {_num(wk.weighted_sum.max())}")
    pictures.show(cols[1], pictures.map_image(wk.relu, sel.colormap, lo=0.0, hi=relu_hi or 1.0, size=size[0]),
                  caption=f"After the ReLU: 0 to {_num(relu_hi)}")
    pictures.show(cols[2], Image.fromarray(explain.render.colorize(wk.upsampled, sel.colormap)),
                  caption=f"Upsampled to {size[0]}×{size[1]}, scaled to 0…1")
    pictures.show(cols[3], pictures.overlay(wk.image, wk.upsampled, sel), caption="Laid over the picture")
    st.markdown(
        f"**Step 3 · weighted sum, then ReLU.** All {c} channels are added up with their weights. "
        f"Blue cells ({negative:.0%} of them here) are evidence *against* the class; the ReLU sets them "
        "to 0, so the map shows only evidence *for* it.  \n"
        f"**Step 4 · upsample.** The {h}×{w} grid is stretched smoothly (bilinear) to the "
        f"{size[0]}×{size[1]} picture and scaled to 0…1, so it can be coloured and laid over it."
    )


def cam_part(wk: Walkthrough, sel: state.Selection, class_name: str) -> None:
    """CAM: the linear layer's row as the weights."""
    c, h, w = wk.layer_shape
    st.subheader("1 · CAM (class activation mapping)")
    st.latex(r"M^c = \sum_k w_k^c\,A^k")
    st.markdown(f"**Step 1 · feature maps.** Layer {text.md_escape(wk.layer)} hands over {c} feature maps "
                f"of {h}×{w} numbers. The {len(wk.channel_indices)} channels that add the most to "
                f"'{text.md_escape(class_name)}':")
    feature_maps(wk)
    st.markdown(
        "**Step 2 · weights.** For CAM the weights are the model's own: the row of class "
        f"'{text.md_escape(class_name)}' in the final linear layer, which turns the {c} channel averages "
        f"into the class score. These {len(wk.channel_indices)} channels carry "
        f"{wk.contribution_share:.0%} of the positive evidence."
    )
    st.dataframe(weights_table(wk, "Weight w_k (row of the linear layer)"), hide_index=True, width="content")
    map_steps(wk, sel, "M^c")


def gradcam_part(wk: Walkthrough, sel: state.Selection, class_name: str, after_cam: bool) -> None:
    """Grad-CAM: averaged gradients as the weights."""
    c, h, w = wk.layer_shape
    st.subheader("2 · Grad-CAM")
    st.latex(r"\alpha_k^c = \frac{1}{Z}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}"
             r"\qquad M^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c\,A^k\Big)")
    if after_cam:
        st.markdown("**Step 1 · feature maps** are the same as for CAM.")
    else:
        st.markdown(f"**Step 1 · feature maps.** Layer {text.md_escape(wk.layer)} hands over {c} feature maps "
                    f"of {h}×{w} numbers. The {len(wk.channel_indices)} channels that add the most to "
                    f"'{text.md_escape(class_name)}':")
        feature_maps(wk)
    st.markdown(
        f"**Step 2 · weights from gradients.** Grad-CAM asks how the score $y^c$ of "
        f"'{text.md_escape(class_name)}' would change if each number of a feature map grew a little "
        f"(the gradient), and averages that over the {h}×{w} = {h * w} positions ($Z$). "
        f"These {len(wk.channel_indices)} channels carry {wk.contribution_share:.0%} of the positive evidence."
    )
    table = weights_table(wk, "Weight α_k (mean gradient)")
    if wk.cam_weights_scaled is not None:
        table.insert(2, f"CAM weight ÷ {h * w}", wk.cam_weights_scaled[wk.channel_indices].astype(float))
    st.dataframe(table, hide_index=True, width="content")
    if wk.gradcam_equals_cam_scaled:
        st.markdown(f"On this model every α equals CAM's weight divided by {h * w}: same map, one constant apart.")
    map_steps(wk, sel, "M^c")


def why_part(cam: Walkthrough | None, grad: Walkthrough) -> None:
    """Why CAM needs pooling + one linear layer and Grad-CAM does not, with this model's numbers."""
    st.subheader("3 · Why the difference?")
    st.markdown(WHY_GAP)
    st.latex(r"y^c = \sum_k w_k^c \,\frac{1}{Z}\sum_{i,j} A^k_{ij} + b^c"
             r" = \frac{1}{Z}\sum_{i,j} \underbrace{\sum_k w_k^c A^k_{ij}}_{M^c_{ij}} + b^c")
    wk = cam or grad
    if wk.cam_mean_plus_bias is not None and wk.bias is not None:
        st.markdown(
            f"The score is the average of the map (before the ReLU) plus a bias, so the map splits the score "
            f"over the picture. On this picture: mean of the map {wk.cam_mean_plus_bias - wk.bias:.4f} + "
            f"bias {wk.bias:.4f} = **{wk.cam_mean_plus_bias:.4f}**; the model's own score "
            f"$y^c$ = **{wk.logit:.4f}**."
        )
    else:
        st.markdown("At this layer that is not the case (see part 1): after it the model does more than pool "
                    "and apply one linear layer, so there is no single weight per channel for CAM to use.")
    st.markdown(WHY_GRADCAM)


def contrast_part(m: explain.Model, sel, class_name: str) -> None:
    """"Why A rather than B": the same sum, with the difference of two rows of weights."""
    runners = [i for i, _n, _p in sel.predictions if i != sel.target]
    if not runners:
        return
    other = runners[0]
    st.subheader("4 · Why this class rather than another?")
    st.latex(r"M^{A-B} = \mathrm{ReLU}\Big(\sum_k \big(w_k^A - w_k^B\big)\,A^k\Big),\qquad "
             r"\frac{\partial (y^A - y^B)}{\partial A^k} = \frac{\partial y^A}{\partial A^k} - \frac{\partial y^B}{\partial A^k}")
    st.markdown(text.md_escape(
        f"To ask why the model says '{class_name}' rather than '{m.categories[other]}', explain the difference "
        "of the two scores. Its weights are the difference of two rows: CAM's two rows of the linear layer, "
        "or Grad-CAM's two averaged gradients (one more row of the same backward pass). The map keeps what "
        f"speaks for '{class_name}' more than for '{m.categories[other]}'."
    ))
    r = compute.run_explain(m, sel, [sel.target], method=explain.TEACH_GRADCAM, contrast=other)
    left, _ = st.columns([1, 2])
    pictures.show(left, compute.overlays(r, sel)[0],
                  caption=text.md_escape(f"Grad-CAM: {text.class_label(m.categories, sel.target)} rather than "
                                         f"{m.categories[other]}"))


with page.guard("preparing the lesson"):
    sel = page.need_selection()
    m = resources.get_model(sel.model_name)
    class_name = m.categories[sel.target]
    st.header("Learn: how CAM and Grad-CAM draw their maps")
    grad = walkthrough(m, sel.image, sel.target, layer=sel.layer, method=explain.TEACH_GRADCAM, top_channels=TOP_CHANNELS,
                       fit=sel.fit, polarity=sel.polarity)
    st.caption(
        f"Live numbers for {text.md_escape(text.class_label(m.categories, sel.target))} "
        f"({text.percent(grad.prob)}) on {text.md_escape(sel.image_label)} · model {text.md_escape(m.name)} "
        f"· layer {text.md_escape(grad.layer)}. Change them in the sidebar."
    )
    left, right = st.columns([3, 1])
    left.markdown(INTRO)
    pictures.show(right, pictures.overlay(grad.image, grad.upsampled, sel), caption="Where we are going: the Grad-CAM map")

    cam: Walkthrough | None = None
    reason: str | None = None
    try:
        cam = walkthrough(m, sel.image, sel.target, layer=sel.layer, method=explain.TEACH_CAM, top_channels=TOP_CHANNELS,
                          fit=sel.fit, polarity=sel.polarity)
    except explain.MethodNotApplicableError as err:
        reason = str(err)
    st.divider()
    if cam is not None:
        cam_part(cam, sel, class_name)
    else:
        st.subheader("1 · CAM does not apply here")
        hint = ""
        try:
            explain.get_method(explain.TEACH_CAM).check(m, m.default_layer)
            hint = f" CAM does work at layer {m.default_layer} (the recommended one): choose it in the sidebar."
        except explain.MethodNotApplicableError:
            hint = " This model has no layer where it does, so the lesson continues with Grad-CAM only."
        st.warning(text.md_escape(f"{reason}{hint}"))
    st.divider()
    gradcam_part(grad, sel, class_name, after_cam=cam is not None)
    st.divider()
    why_part(cam, grad)
    st.divider()
    contrast_part(m, sel, class_name)
