"""The lesson's numbers (explain.teach): CAM's logit identity, Grad-CAM's link to CAM, and that the
walkthrough draws exactly the map that explain() draws, from the same cached capture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import explain
from explain.teach import Walkthrough, walkthrough

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"
EGYPTIAN_CAT = 285


@pytest.fixture(scope="module")
def cat():
    return explain.load_image(SAMPLES / "cat.jpg")


def _model_logits(model: explain.Model, image) -> torch.Tensor:
    """The model's logits computed independently of the engine's capture."""
    _, x = model.view_and_tensor(image)
    with torch.no_grad():
        return model.module(x)[0].float()


def _head(model: explain.Model, layer: str) -> torch.nn.Linear:
    return dict(model.module.named_modules())[model.layer_info(layer).cam_linear]


def test_cam_logit_is_the_map_mean_plus_bias(lite0, cat):
    wt = walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam")
    assert wt.layer == lite0.default_layer and wt.method == "cam"
    assert wt.class_name == "Egyptian cat"
    logits = _model_logits(lite0, cat)
    assert wt.logit == pytest.approx(float(logits[EGYPTIAN_CAT]), abs=1e-5)
    assert wt.prob == pytest.approx(float(torch.softmax(logits, 0)[EGYPTIAN_CAT]), abs=1e-6)
    # The identity the lesson is about: pooling-then-linear and CAM-then-mean both give the logit.
    assert wt.cam_mean_plus_bias == pytest.approx(wt.logit, abs=1e-4)
    assert wt.gap_logit == pytest.approx(wt.logit, abs=1e-4)
    assert wt.logit_gap is not None and wt.logit_gap < 1e-4
    head = _head(lite0, wt.layer)
    assert wt.bias == pytest.approx(float(head.bias[EGYPTIAN_CAT]))
    np.testing.assert_array_equal(wt.all_weights, head.weight[EGYPTIAN_CAT].numpy())
    # The mean of the pre-ReLU map carries the logit, not the mean of the ReLU'd one (unless no
    # location is negative), so the page must show `weighted_sum`, not `relu`, for this step.
    assert float(wt.weighted_sum.mean()) + wt.bias == pytest.approx(wt.logit, abs=1e-4)
    assert wt.gradcam_equals_cam_scaled is None  # only Grad-CAM answers that question


def test_cam_map_equals_explain_and_shapes(lite0, cat):
    r = explain.explain(lite0, cat, targets=[EGYPTIAN_CAT], method="cam")
    wt = walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam", top_channels=6)
    np.testing.assert_allclose(wt.relu, r.maps[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(wt.upsampled, r.heatmaps("per_map")[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(wt.relu, np.maximum(wt.weighted_sum, 0))
    c, h, w = lite0.layer_info(wt.layer).shape
    assert wt.layer_shape == (c, h, w)
    assert wt.activation_top.shape == (6, h, w)
    for arr in (wt.channel_weights, wt.channel_means, wt.channel_contributions):
        assert arr.shape == (6,)
    assert wt.all_weights.shape == wt.all_contributions.shape == (c,)
    assert wt.weighted_sum.shape == wt.relu.shape == (h, w)
    assert wt.upsampled.shape == (wt.image.size[1], wt.image.size[0])
    # Normalised on the h×w grid, then upsampled: bilinear interpolation may shave the peak a little.
    assert wt.upsampled.min() == 0.0 and 0.9 < wt.upsampled.max() <= 1.0
    # The shown feature maps are the capture's own channels.
    _, x = lite0.view_and_tensor(cat)
    act = lite0.capture(x, wt.layer).activation.numpy()
    np.testing.assert_array_equal(wt.activation_top, act[wt.channel_indices])
    np.testing.assert_allclose(wt.channel_means, act[wt.channel_indices].mean(axis=(1, 2)), rtol=1e-5)


def test_top_channels_are_the_largest_contributions(lite0, cat):
    wt = walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam", top_channels=5)
    contrib = wt.all_contributions
    _, x = lite0.view_and_tensor(cat)
    means = lite0.capture(x, wt.layer).activation.mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(contrib, wt.all_weights * means, rtol=1e-5, atol=1e-8)
    mags = np.abs(wt.channel_contributions)
    assert np.all(np.diff(mags) <= 0), "top channels must be sorted by |contribution|, largest first"
    # No channel left out contributes more than the weakest one shown.
    rest = np.delete(np.abs(contrib), wt.channel_indices)
    assert rest.max() <= mags.min()
    np.testing.assert_allclose(wt.channel_contributions, wt.channel_weights * wt.channel_means, rtol=1e-5)
    np.testing.assert_array_equal(wt.channel_contributions, contrib[wt.channel_indices])
    positive = np.clip(contrib, 0, None)
    share = np.clip(wt.channel_contributions, 0, None).sum() / positive.sum()
    assert wt.contribution_share == pytest.approx(float(share), rel=1e-5)
    assert 0.0 < wt.contribution_share < 1.0
    # CAM: the contributions plus the bias are the logit.
    assert float(contrib.astype(np.float64).sum()) + wt.bias == pytest.approx(wt.logit, abs=1e-4)
    # More channels shown never carry a smaller share; all of them carry everything.
    more = walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam", top_channels=50)
    assert more.contribution_share >= wt.contribution_share
    assert more.channel_indices[:5] == wt.channel_indices
    everything = walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam", top_channels=10_000)
    assert len(everything.channel_indices) == wt.layer_shape[0]
    assert everything.contribution_share == pytest.approx(1.0)
    # Channels that vote against the class rank by their size too, among those that vote for it.
    ranked = everything.channel_contributions
    assert (ranked < 0).any() and np.all(np.diff(np.abs(ranked)) <= 0)
    assert sorted(everything.channel_indices) == list(range(wt.layer_shape[0]))


def test_gradcam_weights_are_mean_gradients_and_scaled_cam_weights(lite0, cat):
    wt = walkthrough(lite0, cat, EGYPTIAN_CAT, method="gradcam")
    _, x = lite0.view_and_tensor(cat)
    grads = lite0.capture(x, wt.layer).gradients([EGYPTIAN_CAT])[0]
    np.testing.assert_allclose(wt.all_weights, grads.mean(dim=(1, 2)).numpy(), rtol=1e-6, atol=1e-9)
    _, h, w = wt.layer_shape
    head = _head(lite0, wt.layer)
    expected = head.weight[EGYPTIAN_CAT].numpy() / (h * w)
    np.testing.assert_allclose(wt.cam_weights_scaled, expected, rtol=1e-6)
    np.testing.assert_allclose(wt.all_weights, expected, rtol=1e-3, atol=1e-7)
    assert wt.gradcam_equals_cam_scaled is True
    # Hence on this head Grad-CAM is CAM divided by h·w, and picks the same channels.
    cam = walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam")
    np.testing.assert_allclose(wt.relu * h * w, cam.relu, rtol=1e-3, atol=1e-4)
    assert wt.channel_indices == cam.channel_indices
    r = explain.explain(lite0, cat, targets=[EGYPTIAN_CAT], method="gradcam")
    np.testing.assert_allclose(wt.relu, r.maps[0].numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(wt.upsampled, r.heatmaps("per_map")[0], rtol=0, atol=1e-6)


def test_gradcam_at_a_layer_without_a_cam_head(lite0, cat):
    layer = "conv_head"
    assert lite0.layer_info(layer).cam_linear is None
    with pytest.raises(explain.MethodNotApplicableError, match="CAM does not apply"):
        walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam", layer=layer)
    wt = walkthrough(lite0, cat, EGYPTIAN_CAT, method="gradcam", layer=layer)
    assert wt.bias is None and wt.cam_mean_plus_bias is None and wt.gap_logit is None
    assert wt.gradcam_equals_cam_scaled is None and wt.cam_weights_scaled is None and wt.logit_gap is None
    r = explain.explain(lite0, cat, targets=[EGYPTIAN_CAT], method="gradcam", layer=layer)
    np.testing.assert_allclose(wt.relu, r.maps[0].numpy(), rtol=0, atol=1e-7)


def test_cam_rejected_exactly_where_the_engine_rejects_it(lite0, cat):
    cam = explain.get_method("cam")
    for layer in ("blocks.6", "conv_head", "bn2.act"):
        try:
            cam.check(lite0, layer)
            engine_ok = True
        except explain.MethodNotApplicableError:
            engine_ok = False
        if engine_ok:
            assert walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam", layer=layer).layer == layer
        else:
            with pytest.raises(explain.MethodNotApplicableError):
                walkthrough(lite0, cat, EGYPTIAN_CAT, method="cam", layer=layer)


def test_no_extra_forward_pass_after_explain(lite0):
    image = explain.load_image(SAMPLES / "cat_and_coffee.jpg")
    r = explain.explain(lite0, image, method="gradcam")
    cls = r.targets[0]
    passes, hits = lite0.stats.forward_passes, lite0.stats.capture_hits
    walkthrough(lite0, image, cls, method="gradcam")
    walkthrough(lite0, image, cls, method="cam")
    walkthrough(lite0, image, "espresso", method="gradcam")
    assert lite0.stats.forward_passes == passes
    assert lite0.stats.capture_hits == hits + 3
    # The counter does move when a capture is really missing: another layer needs a forward pass.
    walkthrough(lite0, image, cls, method="gradcam", layer="blocks.5")
    assert lite0.stats.forward_passes == passes + 1


def test_classes_by_name_and_bad_input(lite0, cat):
    by_name = walkthrough(lite0, cat, "tabby", method="gradcam")
    assert by_name.cls == 281 and by_name.class_name == "tabby"
    with pytest.raises(explain.UnknownMethodError, match="CAM|cam"):
        walkthrough(lite0, cat, 281, method="layercam")
    with pytest.raises(explain.UnknownMethodError):
        walkthrough(lite0, cat, 281, method="no-such-method")
    with pytest.raises(explain.UnknownClassError):
        walkthrough(lite0, cat, 1000)
    with pytest.raises(explain.UnknownClassError):
        walkthrough(lite0, cat, "not a category")
    with pytest.raises(explain.UnknownLayerError):
        walkthrough(lite0, cat, 281, layer="no.such.layer")
    with pytest.raises(explain.ExplainError, match="top_channels"):
        walkthrough(lite0, cat, 281, top_channels=0)
    with pytest.raises(explain.ExplainError, match="PIL image"):
        walkthrough(lite0, np.zeros((8, 8, 3), np.uint8), 281)  # type: ignore[arg-type]


def test_shared_model_is_only_read(lite0, cat):
    head = lite0.module.classifier
    before = head.weight.clone(), head.bias.clone()
    hooks = sum(len(m._forward_hooks) for m in lite0.module.modules())
    for method in ("cam", "gradcam"):
        walkthrough(lite0, cat, EGYPTIAN_CAT, method=method)
    assert torch.equal(head.weight, before[0]) and torch.equal(head.bias, before[1])
    assert sum(len(m._forward_hooks) for m in lite0.module.modules()) == hooks
    assert all(p.grad is None and not p.requires_grad for p in lite0.module.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_digits_lenet(digits, method):
    image = explain.load_image(SAMPLES / "digit_3.png")
    wt = walkthrough(digits, image, 3, method=method, top_channels=3)
    assert isinstance(wt, Walkthrough)
    assert wt.layer == digits.default_layer and wt.layer_shape == digits.layer_info(wt.layer).shape
    assert wt.class_name == "3" and wt.prob > 0.5  # the embedded LeNet does read this digit
    assert wt.cam_mean_plus_bias == pytest.approx(wt.logit, abs=1e-4)
    assert wt.logit == pytest.approx(float(_model_logits(digits, image)[3]), abs=1e-5)
    assert wt.activation_top.shape == (3, *wt.layer_shape[1:])
    assert wt.upsampled.shape == (32, 32)
    r = explain.explain(digits, image, targets=[3], method=method)
    np.testing.assert_allclose(wt.relu, r.maps[0].numpy(), rtol=0, atol=1e-6)
    if method == "gradcam":
        assert wt.gradcam_equals_cam_scaled is True
