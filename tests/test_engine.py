"""Engine behaviour on real photos, the explain() API, layer discovery, and model loading/weights.

Real-weights checks use the embedded ``efficientnet_lite0``; everything torchvision uses random
weights (``weights=None``) because the test machine has no network. Downloads are simulated by
patching ``torch.hub.download_url_to_file`` inside a temporary ``TORCH_HOME``.
"""

from __future__ import annotations

import copy
import glob
import os
import pathlib
import urllib.error

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from conftest import completion_order
from PIL import Image
from torch import nn

import explain
from explain.zoo import efficientnet_lite0 as lite0_zoo

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


# ---- 1. the embedded model on real photos -------------------------------------------------------
def test_cat_photo_is_a_cat(lite0, cat_img):
    r = explain.explain(lite0, cat_img, top_k=3)
    top = [i for i, _, _ in r.predictions]
    assert top[0] in {EGYPTIAN_CAT, TABBY, TIGER_CAT}, r.predictions
    assert set(top) <= CAT_CLASSES, r.predictions
    probs = [p for _, _, p in r.predictions]
    assert probs == sorted(probs, reverse=True)
    assert r.predictions[0][1] == lite0.categories[top[0]]
    assert r.probs.shape == (1000,) and abs(float(r.probs.sum()) - 1.0) < 1e-4
    # Default target is the top-1 class.
    assert r.targets == [top[0]] and r.target_names == [lite0.categories[top[0]]]
    assert r.prob(top[0]) == pytest.approx(probs[0])


def test_coffee_photo_is_espresso(lite0, coffee_img):
    r = explain.explain(lite0, coffee_img)
    assert r.predictions[0][0] == ESPRESSO, r.predictions
    assert r.predictions[0][1] == "espresso"


def _halves(heat: np.ndarray) -> tuple[float, float]:
    w = heat.shape[1]
    return float(heat[:, : w // 2].sum()), float(heat[:, w // 2 :].sum())


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_maps_localise_cat_left_and_coffee_right(lite0, cat_coffee_img, method):
    r = explain.explain(lite0, cat_coffee_img, targets=[EGYPTIAN_CAT, "espresso"], method=method)
    assert r.targets == [EGYPTIAN_CAT, ESPRESSO]
    heat = r.heatmaps("per_map")
    assert heat.shape == (2, 224, 224)
    cat_left, cat_right = _halves(heat[0])
    cup_left, cup_right = _halves(heat[1])
    assert cat_left >= 2 * cat_right, (cat_left, cat_right)
    assert cup_right >= 2 * cup_left, (cup_left, cup_right)
    # The peaks fall on the right side too.
    assert np.unravel_index(heat[0].argmax(), heat[0].shape)[1] < 112
    assert np.unravel_index(heat[1].argmax(), heat[1].shape)[1] >= 112


def test_class_names_and_indices_are_validated(lite0, cat_img):
    assert lite0.class_index("Tabby") == TABBY
    assert lite0.class_index(" 967 ") == ESPRESSO
    assert lite0.class_index(np.int64(5)) == 5
    with pytest.raises(explain.UnknownClassError, match="out of range"):
        lite0.class_index(1000)
    with pytest.raises(explain.UnknownClassError, match="out of range"):
        lite0.class_index(-1)
    with pytest.raises(explain.UnknownClassError, match="no class named"):
        lite0.class_index("unicorn")
    with pytest.raises(explain.UnknownClassError):
        explain.explain(lite0, cat_img, targets=[1000])


def test_bad_arguments_are_specific_errors(lite0, cat_img):
    with pytest.raises(explain.UnknownMethodError, match="gradcam"):
        explain.explain(lite0, cat_img, method="magic")
    with pytest.raises(explain.ExplainError, match="PIL image"):
        explain.explain(lite0, np.zeros((224, 224, 3), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(explain.ExplainError, match="fit"):
        explain.explain(lite0, cat_img, fit="stretch")  # type: ignore[arg-type]
    assert explain.get_method("Grad-CAM").name == "gradcam"
    assert explain.get_method("GradCAM++").name == "gradcam++"


def test_unknown_layer_lists_valid_names(lite0, cat_img):
    with pytest.raises(explain.UnknownLayerError) as info:
        explain.explain(lite0, cat_img, layer="no.such.layer")
    msg = str(info.value)
    assert "no.such.layer" in msg
    valid = [n for n, _ in lite0.layers()]
    assert sum(n in msg for n in valid) >= 3
    assert lite0.default_layer in msg


def test_crop_and_squash_views(lite0, sample_image):
    wide = sample_image("cat_and_coffee.jpg")
    assert wide.width > wide.height
    squash = explain.explain(lite0, wide, fit="squash")
    crop = explain.explain(lite0, wide, fit="crop")
    assert squash.image.size == crop.image.size == (224, 224)
    # Squash keeps both objects, so it differs from the centre crop.
    assert not np.array_equal(np.asarray(squash.image), np.asarray(crop.image))


# ---- layer listing ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "digits_lenet"])
def test_layers_are_in_forward_order_with_grid_shapes(name, lite0, digits, tv_model, cat_img):
    m = {"efficientnet_lite0": lite0, "digits_lenet": digits}.get(name) or tv_model(name)
    layers = m.layers()
    assert layers and len({n for n, _ in layers}) == len(layers)
    for n, shape in layers:
        assert isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)
        assert m.layer_info(n).shape == shape
    order = completion_order(m.module, m.view_and_tensor(cat_img)[1])
    positions = [order.index(n) for n, _ in layers]
    assert positions == sorted(positions)
    assert m.default_layer in [n for n, _ in layers]


def test_default_layers(lite0, digits, tv_model):
    assert lite0.default_layer == "bn2" and lite0.layer_info(None).shape == (1280, 7, 7)
    assert tv_model("resnet18").default_layer == "layer4"
    # vgg16 ("features.29", past VGG's final max-pool) is checked in the slow all-architectures test.
    assert digits.default_layer == "features"


# ---- 5. layer discovery on toy models -----------------------------------------------------------
class Toy(nn.Module):
    """``act`` is used twice (not a valid target); ``conv3`` is followed by an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.relu(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _toy_model(seed: int = 0) -> explain.Model:
    torch.manual_seed(seed)
    pre = explain.Preprocess(input_size=16, resize_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return explain.Model("toy", Toy(), [f"c{i}" for i in range(5)], pre, device="cpu")


def test_reused_module_is_not_a_candidate_layer():
    m = _toy_model()
    names = [n for n, _ in m.layers()]
    assert "act" not in names
    assert names == ["conv1", "conv2", "conv3", "relu"]
    assert m.default_layer == "relu"
    with pytest.raises(explain.UnknownLayerError):
        m.layer_info("act")
    # CAM is exact only where pooling + the linear layer follow directly.
    assert m.layer_info("relu").cam_linear == "fc"
    assert m.layer_info("conv3").cam_linear is None
    with pytest.raises(explain.MethodNotApplicableError, match="Grad-CAM"):
        explain.get_method("cam").check(m, "conv3")


def test_inplace_relu_after_target_gives_correct_gradcam():
    m = _toy_model(seed=3)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    x = m.view_and_tensor(img)[1]
    net = copy.deepcopy(m.module)
    for p in net.parameters():
        p.requires_grad_(True)
    # Reference without in-place operations, written out by hand.
    a = net.conv3(net.act(net.conv2(net.act(net.conv1(x)))))
    a.retain_grad()
    logits = net.fc(torch.flatten(net.pool(F.relu(a)), 1))
    for c in range(5):
        a.grad = None
        logits[0, c].backward(retain_graph=True)
        w = a.grad[0].mean(dim=(1, 2))
        ref = F.relu((w[:, None, None] * a[0]).sum(0)).detach()
        r = explain.explain(m, img, targets=[c], layer="conv3", method="gradcam")
        torch.testing.assert_close(r.maps[0], ref, rtol=1e-4, atol=1e-6)
    # The kept activation is conv3's output, not the ReLU'd tensor the in-place op produced.
    cap = m.capture(x, "conv3")
    torch.testing.assert_close(cap.activation, a[0].detach())
    assert (cap.activation < 0).any()
    # And the model's own output is unaffected by the tap's clone.
    with torch.no_grad():
        torch.testing.assert_close(m.module(x), logits.detach())


# ---- 7. model loading and weights ------------------------------------------------------------------
def test_model_names_and_list():
    names = explain.model_names()
    assert names[:2] == ["efficientnet_lite0", "digits_lenet"]
    assert {"resnet18", "vgg16", "vit_b_16", "swin_t", "convnext_tiny"} <= set(names)
    assert len(names) == len(set(names))
    infos = {i.name: i for i in explain.list_models()}
    assert set(infos) == set(names)
    assert infos["efficientnet_lite0"].cached and infos["efficientnet_lite0"].source == "embedded"
    assert infos["resnet18"].weights_file == "resnet18-f37072fd.pth"
    assert infos["resnet18"].size_mb > 10


def test_unknown_model_suggests_names():
    with pytest.raises(explain.UnknownModelError) as info:
        explain.load_model("resnet-18")
    msg = str(info.value)
    assert "resnet-18" in msg and "Did you mean" in msg and "resnet18" in msg
    with pytest.raises(explain.UnknownModelError, match="model_names"):
        explain.load_model("zzzz")
    with pytest.raises(explain.UnknownModelError, match="IMAGENET1K_V1"):
        explain.load_model("resnet18", weights="NOPE")


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return torch.load(lite0_zoo.weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_arch() -> nn.Module:
    return timm.create_model(lite0_zoo.TIMM_NAME, pretrained=False)


def test_lite0_renaming_maps_every_tensor(lite0_state, lite0_arch, lite0):
    renamed = lite0_zoo.rename_state_dict(lite0_state, lite0_arch)
    assert set(renamed) == set(lite0_arch.state_dict())
    # The loaded model holds exactly these tensors.
    loaded = lite0.module.state_dict()
    for k, v in renamed.items():
        assert torch.equal(loaded[k].cpu(), v), k


def test_lite0_shape_mismatch_is_named(lite0_state, lite0_arch):
    state = dict(lite0_state)
    key = "_blocks.3._project_conv.weight"
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    with pytest.raises(explain.WeightsMismatchError, match=key.replace(".", r"\.")) as info:
        lite0_zoo.rename_state_dict(state, lite0_arch, source="mine.pth")
    assert "mine.pth" in str(info.value) and "shape" in str(info.value)


def test_lite0_missing_and_foreign_keys_are_named(lite0_state, lite0_arch):
    state = dict(lite0_state)
    del state["_conv_head.weight"]
    with pytest.raises(explain.WeightsMismatchError, match=r"conv_head\.weight"):
        lite0_zoo.rename_state_dict(state, lite0_arch)
    state = dict(lite0_state)
    state["_extra.weight"] = torch.zeros(3)
    with pytest.raises(explain.WeightsMismatchError, match=r"_extra\.weight"):
        lite0_zoo.rename_state_dict(state, lite0_arch)


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch) -> pathlib.Path:
    """A private, empty TORCH_HOME; the global hub dir is restored afterwards."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored on teardown
    torch.hub.set_dir(str(home / "hub"))
    return home / "hub" / "checkpoints"


def _offline(*_a: object, **_k: object) -> None:
    raise urllib.error.URLError("offline")


def _writer(state: dict[str, torch.Tensor], calls: list[str]):
    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(url)
        torch.save(state, dst)

    return download


def test_offline_download_is_a_clear_error_then_a_download_works(hub_dir, monkeypatch):
    assert explain.checkpoint_dir() == str(hub_dir)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(explain.WeightsUnavailableError) as info:
        explain.load_model("resnet18")
    msg = str(info.value)
    assert "resnet18-f37072fd.pth" in msg and str(hub_dir) in msg and "offline" in msg
    assert not (hub_dir / "resnet18-f37072fd.pth").exists()

    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    calls: list[str] = []
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", _writer(state, calls))
    m = explain.load_model("resnet18", device="cpu", progress=lambda d, t: seen.append((d, t)))
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert (hub_dir / "resnet18-f37072fd.pth").is_file()
    loaded = m.module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert m.categories[ESPRESSO] == "espresso"

    # Cached now: no second download.
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    again = explain.load_model("resnet18", device="cpu")
    assert torch.equal(again.module.fc.weight, state["fc.weight"])


def test_corrupt_cached_file_is_moved_aside_and_redownloaded(hub_dir, monkeypatch):
    hub_dir.mkdir(parents=True)
    path = hub_dir / "resnet18-f37072fd.pth"
    path.write_bytes(b"this is not a checkpoint" * 100)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(explain.WeightsUnavailableError, match="corrupt") as info:
        explain.load_model("resnet18")
    assert str(path) in str(info.value)
    assert not path.exists()
    aside = glob.glob(str(path) + ".corrupt-*")
    assert len(aside) == 1 and aside[0] in str(info.value)

    calls: list[str] = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", _writer(torchvision.models.resnet18().state_dict(), calls))
    m = explain.load_model("resnet18", device="cpu")
    assert len(calls) == 1 and path.is_file() and m.default_layer == "layer4"


def test_foreign_state_dict_in_cache_is_reported(hub_dir, monkeypatch):
    hub_dir.mkdir(parents=True)
    path = hub_dir / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    with pytest.raises(explain.WeightsUnavailableError, match="does not fit"):
        explain.load_model("resnet18")
    assert not path.exists()


def test_list_models_marks_cached_iff_file_exists(hub_dir):
    infos = explain.list_models()
    before = {i.name: i.cached for i in infos}
    embedded = {i.name for i in infos if i.source == "embedded"}
    assert {"efficientnet_lite0", "digits_lenet"} <= embedded and all(before[n] for n in embedded)
    assert not any(c for n, c in before.items() if n not in embedded)
    hub_dir.mkdir(parents=True)
    (hub_dir / "resnet18-f37072fd.pth").write_bytes(b"x")
    after = {i.name: i.cached for i in explain.list_models()}
    assert [n for n, c in after.items() if c != before[n]] == ["resnet18"]
    assert os.path.basename(explain.weights_file("resnet18")) == "resnet18-f37072fd.pth"
    assert explain.weights_file("resnet18") == str(hub_dir / "resnet18-f37072fd.pth")
