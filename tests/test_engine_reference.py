"""Token and channels-last layers against pytorch-grad-cam with its reshape transforms, and
Grad-CAM++ against pytorch-grad-cam's own weighting on a capture where its ``Σ A`` term matters.

The maps here are compared cell by cell, so a transposed grid (h and w swapped) cannot pass: on a
random-weight network the maps are far from symmetric.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import build_random
from torch import nn

import explain
import explain.model
from explain.methods import get_method
from explain.model import Capture


def _trainable_copy(module: nn.Module) -> nn.Module:
    net = explain.model.plain_copy(module)
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _vit_tokens_to_grid(tensor: torch.Tensor, side: int = 7) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT transform: drop the class token, fold rows of patches."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _swin_nhwc_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented Swin transform for a [B, h, w, C] output."""
    return tensor.transpose(2, 3).transpose(1, 2)


def _pgc_gradcam(m: explain.Model, x: torch.Tensor, layer: str, classes, transform) -> list[np.ndarray]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _trainable_copy(m.module)
    target = dict(net.named_modules())[layer]
    with GradCAM(model=net, target_layers=[target], reshape_transform=transform) as cam:
        return [cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c)])[0] for c in classes]


def _assert_same_maps(ours: np.ndarray, theirs: list[np.ndarray], what: str) -> None:
    for k, t in enumerate(theirs):
        mine = (ours[k] - ours[k].min()) / (ours[k].max() - ours[k].min())
        assert float(np.abs(mine - t).max()) < 0.02, (what, k, float(np.abs(mine - t).max()))


@pytest.fixture(scope="module")
def vit() -> explain.Model:
    """ViT-B/32 with random weights and a *non-zero* head (torchvision zero-initialises it)."""
    m = build_random("vit_b_32")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nn.init.normal_(m.module.heads.head.weight, std=0.02)
    return m


@pytest.mark.slow
def test_vit_token_grid_matches_pytorch_grad_cam(vit, cat_img):
    info = vit.layer_info(None)
    assert info.layout == "tokens" and info.shape == (768, 7, 7) and info.prefix_tokens == 1
    x = vit.view_and_tensor(cat_img)[1]
    classes = [0, 7]
    ours = explain.explain(vit, cat_img, targets=classes, method="gradcam").heatmaps("per_map")
    theirs = _pgc_gradcam(vit, x, info.name, classes, _vit_tokens_to_grid)
    _assert_same_maps(ours, theirs, info.name)
    # The maps are not symmetric, so the comparison above would see a transposed grid.
    raw = explain.explain(vit, cat_img, targets=classes, method="gradcam").maps
    assert float((raw - raw.transpose(1, 2)).abs().max()) > 0.1 * float(raw.abs().max())


@pytest.fixture(scope="module")
def swin() -> explain.Model:
    return build_random("swin_t")


@pytest.mark.slow
def test_swin_channels_last_layer_matches_pytorch_grad_cam(swin, cat_img):
    layer = "features.7"  # a stage output, really [B, h, w, C] (the default 'permute' is already NCHW)
    info = swin.layer_info(layer)
    assert info.layout == "nhwc" and info.shape == (768, 7, 7)
    x = swin.view_and_tensor(cat_img)[1]
    classes = [1, 2]
    r = explain.explain(swin, cat_img, targets=classes, layer=layer, method="gradcam")
    theirs = _pgc_gradcam(swin, x, layer, classes, _swin_nhwc_to_grid)
    _assert_same_maps(r.heatmaps("per_map"), theirs, layer)
    assert float((r.maps - r.maps.transpose(1, 2)).abs().max()) > 0.1 * float(r.maps.abs().max())


# ---- Grad-CAM++: the Σ A term, on a synthetic capture where it matters ----------------------------


def _synthetic_capture(seed: int = 0) -> Capture:
    """A 'layer' A [1, 6, 5, 5] with large positive sums and a head whose gradient varies with
    position and whose third power is not negligible: alpha then depends strongly on Σ A."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(1, 6, 5, 5, generator=g) * 3.0).requires_grad_(True)
    w1 = torch.randn(4, 6, 5, 5, generator=g)
    w2 = torch.randn(4, 6, 5, 5, generator=g) * 0.5
    logits = (torch.einsum("bchw,kchw->bk", a, w1) + torch.einsum("bchw,kchw->bk", a.pow(2), w2))
    return Capture(None, a, logits, a)


def _pgc_gradcampp_maps(cap: Capture, classes) -> np.ndarray:
    from pytorch_grad_cam import GradCAMPlusPlus

    acts = cap.activation.detach().numpy()[None]
    out = []
    ref = object.__new__(GradCAMPlusPlus)  # only its weighting is used, no model or hooks
    ref.activations_and_grads = SimpleNamespace(release=lambda: None)  # what its __del__ releases
    for c in classes:
        grads = cap.gradients([c]).numpy()  # [1, C, h, w]
        cam = GradCAMPlusPlus.get_cam_image(ref, None, None, None, acts, grads)[0]
        out.append(np.maximum(cam, 0))
    return np.stack(out)


def test_gradcam_plus_plus_uses_the_sum_of_activations():
    cap = _synthetic_capture()
    classes = [0, 1, 2, 3]
    ours = get_method("gradcam++").maps(None, cap, classes).numpy()  # type: ignore[arg-type]
    theirs = _pgc_gradcampp_maps(cap, classes)
    assert float(theirs.max()) > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.max()))
    # The capture is one where the term matters: with a mean instead of the sum the maps differ.
    grads = cap.gradients(classes)
    g2, g3 = grads.pow(2), grads.pow(3)
    mean_a = cap.activation.mean(dim=(1, 2))[None, :, None, None]
    alpha = torch.where(grads != 0, g2 / (2 * g2 + mean_a * g3 + 1e-6), torch.zeros_like(g2))
    w = (alpha * grads.clamp(min=0)).sum(dim=(2, 3))
    wrong = torch.relu(torch.einsum("kc,chw->khw", w, cap.activation)).numpy()
    assert float(np.abs(wrong - theirs).max()) > 0.05 * float(theirs.max())


# ---- TorchCAM and Captum (the benchmark prints their agreement; here it is asserted) ---------------


def _scaled(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float().reshape(-1)
    return (t - t.min()) / (t.max() - t.min())


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_gradcam_and_cam_agree_with_torchcam_and_captum(layer, tv_model, cat_img):
    """Raw maps at the layer's own resolution, cell by cell, on random-weight ResNet-18."""
    from captum.attr import LayerGradCam
    from torchcam.methods import CAM as TcCAM
    from torchcam.methods import GradCAM as TcGradCAM

    m = tv_model("resnet18")
    x = m.view_and_tensor(cat_img)[1]
    classes = [int(m.predict(x)[0].argmax()), 3]
    ours = explain.explain(m, cat_img, targets=classes, layer=layer, method="gradcam").maps
    net = _trainable_copy(m.module)
    tc = TcGradCAM(net, target_layer=layer)
    try:
        scores = net(x.clone())
        torchcam = [tc(c, scores, retain_graph=True)[0][0] for c in classes]
    finally:
        tc.remove_hooks()
    captum = LayerGradCam(net, dict(net.named_modules())[layer])
    for k, c in enumerate(classes):
        theirs_captum = captum.attribute(x.clone(), target=c, relu_attributions=True)[0, 0]
        for who, theirs in (("TorchCAM", torchcam[k]), ("Captum", theirs_captum)):
            assert theirs.shape == ours[k].shape, who
            gap = float((_scaled(ours[k]) - _scaled(theirs)).abs().max())
            assert gap < 1e-4, (who, layer, c, gap)
    if layer == "layer4":
        cam = explain.explain(m, cat_img, targets=classes, layer=layer, method="cam").maps
        ext = TcCAM(net, target_layer=layer, fc_layer="fc")
        try:
            with torch.no_grad():
                scores = net(x.clone())
            for k, c in enumerate(classes):
                # TorchCAM's CAM has no ReLU (its Grad-CAM has): compare on its raw map, rectified.
                theirs = torch.relu(ext(c, scores, normalized=False)[0][0])
                gap = float((_scaled(cam[k]) - _scaled(theirs)).abs().max())
                assert gap < 1e-4, ("TorchCAM CAM", c, gap)
        finally:
            ext.remove_hooks()
