"""Issue 10: the course material works as taught (engine and command line).

Digits in both polarities, the lesson's LeNet from a Lightning checkpoint, the lessons' overlays
and colormaps, weak and empty evidence, ViT layers only the class token leaves, and the offline
download against a local HTTP server.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import threading

import cv2
import numpy as np
import pytest
import torch
from course_helpers import lightning_checkpoint, mnist_style_digits, render, run_gradcam, trained_lesson_lenet
from PIL import Image, ImageOps
from torchvision.transforms.functional import to_tensor

import explain
from explain import cli, render as rnd
from explain.samples import SAMPLES_DIR
from explain.zoo.lenet import digits_dataset, split_indices

CAT = SAMPLES_DIR / "cat.jpg"  # 451×300


@pytest.fixture(scope="module")
def digits() -> explain.Model:
    return explain.load_model("digits_lenet")


@pytest.fixture(scope="module")
def lite() -> explain.Model:
    return explain.load_model("efficientnet_lite0")


# ---- 1. polarity ----------------------------------------------------------------------------------


def _accuracy(model: explain.Model, size: int, light_on_dark: bool, polarity: str = "auto") -> float:
    images, labels = digits_dataset(dark_on_light=not light_on_dark)
    _, test = split_indices(labels)
    batch = torch.cat([model.view_and_tensor(render(images[i], size).convert("RGB"), polarity=polarity)[1]
                       for i in test])
    return float((model.predict(batch).argmax(1).numpy() == labels[test]).mean())


@pytest.mark.parametrize("size", [8, 28, 64])
@pytest.mark.parametrize("light_on_dark", [False, True], ids=["dark_on_light", "light_on_dark"])
def test_digits_are_read_in_both_polarities(digits: explain.Model, size: int, light_on_dark: bool) -> None:
    assert _accuracy(digits, size, light_on_dark) >= 0.97


def test_manual_polarity_overrides_the_reading(digits: explain.Model) -> None:
    # Saying the wrong polarity gives today's confusion; saying the right one matches "auto".
    assert _accuracy(digits, 28, True, polarity="dark_on_light") < 0.5
    assert _accuracy(digits, 28, True, polarity="light_on_dark") >= 0.97


@pytest.mark.parametrize("name", ["digit_0.png", "digit_3.png", "digit_7.png"])
def test_bundled_digit_samples_in_both_polarities(digits: explain.Model, name: str) -> None:
    picture = explain.load_image(SAMPLES_DIR / name)
    inverted = ImageOps.invert(picture)
    r1 = explain.explain(digits, picture)
    r2 = explain.explain(digits, inverted)
    want = name.split("_")[1][0]
    assert r1.predictions[0][1] == want and r2.predictions[0][1] == want
    assert (r1.polarity, r1.polarity_flipped) == ("dark_on_light", False)
    assert (r2.polarity, r2.polarity_flipped) == ("light_on_dark", True)
    # The same view read both ways is two inputs: the capture cache must not mix them up.
    r3 = explain.explain(digits, inverted, polarity="dark_on_light")
    assert not r3.polarity_auto and r3.polarity == "dark_on_light"
    assert not np.allclose(r3.probs, r2.probs)


def test_read_polarity_and_bad_values() -> None:
    assert explain.read_polarity(Image.new("L", (28, 28), 0)) is None  # a blank page says nothing
    with pytest.raises(explain.ExplainError, match="Unknown polarity"):
        explain.explain(explain.load_model("digits_lenet"), Image.new("RGB", (8, 8)), polarity="upside")


# ---- 2. the lesson's LeNet from a Lightning checkpoint ----------------------------------------


def test_mnist_lenet_from_a_lightning_checkpoint_equals_the_lessons_gradcam() -> None:
    net, acc = trained_lesson_lenet()
    assert acc > 0.8  # it learned (a few epochs)
    state = explain.read_state_dict(lightning_checkpoint(net), "epoch=5.ckpt")
    assert set(state) == set(net.state_dict())  # the "model." prefix is gone, extras are dropped
    m = explain.build_custom("mnist_lenet", state, labels=[str(i) for i in range(10)])
    assert m.default_layer == "conv.4" and m.layer_info("conv.4").shape == (16, 8, 8)
    assert m.preprocess.trained_polarity == "light_on_dark"
    images, labels = mnist_style_digits()
    for i in (0, 7, 42):
        r = explain.explain(m, images[i].convert("RGB"), targets=[int(labels[i])], layer="conv.4")
        want = run_gradcam(net, to_tensor(images[i])[None], int(labels[i]), "conv.4")
        assert torch.allclose(r.maps[0], want, atol=1e-6, rtol=1e-5)


class AttributeDict(dict):
    """Stands in for Lightning's own AttributeDict: a class torch's safe loader does not know."""


def test_checkpoint_with_unsafe_globals_is_still_refused() -> None:
    net, _ = trained_lesson_lenet()
    data = lightning_checkpoint(net, {"hyper_parameters": AttributeDict(lr=0.003)})
    with pytest.raises(explain.WeightsMismatchError, match="refused: it contains Python objects"):
        explain.read_state_dict(data, "epoch=5.ckpt")


def test_mnist_lenet_names_the_lessons_keys() -> None:
    with pytest.raises(explain.WeightsMismatchError, match="needs the lesson's keys 'conv.0.weight'"):
        explain.build_custom("mnist_lenet", {"fc.weight": torch.zeros(10, 64)})


# ---- 3. views and blends ----------------------------------------------------------------------


def test_cv2_jet_is_opencvs_own() -> None:
    heat = np.random.default_rng(0).random((17, 23)).astype(np.float32)
    want = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    assert np.array_equal(rnd.colorize(heat, "cv2_jet"), want)
    assert np.abs(rnd.colorize(heat, "jet").astype(int) - want).max() > 10  # matplotlib's differs
    assert "bwr" in explain.COLORMAPS and rnd.colorize(heat, "bwr").shape == (17, 23, 3)


def test_overlay_modes_are_the_lessons_arithmetic() -> None:
    rng = np.random.default_rng(1)
    pic = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    heat = rng.random((20, 30)).astype(np.float32)
    base = np.asarray(pic)
    colour = rnd.colorize(heat, "cv2_jet")
    added = np.asarray(rnd.overlay(pic, heat, "cv2_jet", mode="add", heat_weight=0.3, image_weight=0.5))
    assert np.array_equal(added, cv2.addWeighted(colour, 0.3, base, 0.5, 0))
    multiplied = np.asarray(rnd.overlay(pic, heat, mode="multiply")).astype(int)
    assert np.abs(multiplied - base * heat[..., None]).max() <= 1
    with pytest.raises(explain.ExplainError, match="Unknown overlay mode"):
        rnd.overlay(pic, heat, mode="screen")


def test_max_normalisation_divides_by_the_maximum() -> None:
    maps = np.array([[[-1.0, 1.0], [2.0, 4.0]]], np.float32)
    assert np.allclose(rnd.normalize_maps(maps, "max"), [[[0.0, 0.25], [0.5, 1.0]]])
    assert np.allclose(rnd.normalize_maps(maps, "per_map"), [[[0.0, 0.4], [0.6, 1.0]]])


def test_overlays_on_the_original_picture(lite: explain.Model) -> None:
    image = explain.load_image(CAT)
    sq = explain.explain(lite, image, fit="squash")
    assert sq.original.size == (451, 300)
    heat = sq.heatmaps("per_map", on="original")
    assert heat.shape == (1, 300, 451)
    want = rnd.upsample(rnd.normalize_maps(sq.maps, "per_map"), (300, 451))
    assert np.allclose(heat, want, atol=1e-6)
    assert sq.overlays(on="original")[0].size == (451, 300)

    cr = explain.explain(lite, image, fit="crop")
    x0, y0, x1, y1 = cr.view_box
    assert abs((x1 - x0) - (y1 - y0)) <= 1 and 0 < x0 < x1 < 451  # a centre square of the picture
    # … the very part the model saw (up to resampling).
    seen = np.asarray(image.crop((x0, y0, x1, y1)).resize(cr.image.size, Image.Resampling.BILINEAR)).astype(float)
    assert np.abs(seen - np.asarray(cr.image)).mean() < 3
    heat = cr.heatmaps("per_map", on="original")[0]
    assert heat[:, :x0].max() == 0 and heat[:, x1:].max() == 0 and heat[:, x0:x1].max() > 0.99
    pic = np.asarray(cr.overlays(on="original")[0]).astype(int)
    orig = np.asarray(image).astype(int)
    assert np.abs(pic[:, :x0] - (orig[:, :x0] * rnd.DIM_OUTSIDE).astype(int)).max() <= 1  # dimmed, no colour


# ---- 4. weak and empty evidence, ViT ------------------------------------------------------------


def test_relative_scale_and_strength(lite: explain.Model) -> None:
    image = explain.load_image(CAT)
    r = explain.explain(lite, image, targets=[919], relative=True)
    top = explain.explain(lite, image)  # the top class, same method and layer
    peak = float(top.maps[0].max())
    assert r.reference == (top.targets[0], pytest.approx(peak))
    assert r.strength(0) == pytest.approx(float(r.maps[0].max()) / peak)
    assert r.strength(0) < 0.5
    rel = r.heatmaps(explain.RELATIVE)
    assert rel.max() == pytest.approx(r.strength(0), abs=0.02)  # weak evidence stays weak
    assert r.heatmaps("per_map").max() > 0.95  # while its own scale stretches it to full strength
    with pytest.raises(explain.ExplainError, match="relative=True"):
        top.heatmaps(explain.RELATIVE)


def test_all_zero_maps_say_so(lite: explain.Model, tmp_path) -> None:
    image = explain.load_image(CAT)
    cam = explain.get_method("cam").name
    r = explain.explain(lite, image, targets=list(range(1000)), method=cam)
    empty = [c for k, c in enumerate(r.targets) if not (r.maps[k] > 0).any()]
    assert empty  # a few classes get nothing at all on the cat
    for c in empty:
        assert f"No part of the picture raises the score of '{lite.categories[c]}' at this layer" in " ".join(r.notices)
    assert len([n for n in r.notices if n.startswith("No part")]) == len(empty)
    # … and in the CLI's JSON.
    assert cli.main([str(CAT), "--method", cam, "--targets", str(empty[0]), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "cat.json").read_text())
    assert summary["empty_targets"] == [empty[0]]
    assert any(n.startswith("No part of the picture raises the score of") for n in summary["notices"])


def test_vit_layers_only_the_class_token_leaves_are_marked() -> None:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=3)
    m = explain.Model("tiny_vit", vit, ["a", "b", "c"], explain.Preprocess(32, 32, (0.5,) * 3, (0.5,) * 3))
    marked = {n for n, _ in m.layers() if m.layer_info(n).note}
    assert {"encoder.ln", "encoder", "encoder.layers.encoder_layer_1"} <= marked
    assert "encoder.layers.encoder_layer_0" not in marked
    assert not m.layer_info(m.default_layer).note
    assert "only the class token" in m.layer_info("encoder.ln").note
    # Marked because it is true: maps there are zero, and the notice says so.
    r = explain.explain(m, Image.new("RGB", (32, 32), "gray"), layer="encoder.ln")
    assert not (r.maps > 0).any() and r.notices


# ---- 5. offline classrooms ------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no request lines in the test output
        pass


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


def _serve_as(monkeypatch, url: str) -> None:
    """The resnet18 default weights enum gives ``url`` (the download code itself is untouched)."""
    from torchvision.models import ResNet18_Weights
    from torchvision.models._api import WeightsEnum

    real = WeightsEnum.url
    monkeypatch.setattr(WeightsEnum, "url", property(
        lambda self: url if self is ResNet18_Weights.DEFAULT else real.fget(self)))
    # The registry reads each torchvision model's spec (file name included) once: a URL is a
    # constant of torchvision, except here.
    explain.registry._torchvision_spec.cache_clear()
    monkeypatch.setattr(explain.registry, "_torchvision_spec", explain.registry._torchvision_spec.__wrapped__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_fetches_checks_and_lists(server, hub, monkeypatch, capsys) -> None:
    root, base = server
    payload = os.urandom(300_000)
    name = f"resnet18-{hashlib.sha256(payload).hexdigest()[:8]}.pth"  # torchvision's naming: hash prefix
    (root / name).write_bytes(payload)
    _serve_as(monkeypatch, f"{base}/{name}")
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    assert any(line.split()[:2] == ["resnet18", "missing"] for line in listing.splitlines())
    assert cli.main(["download", "resnet18"]) == 0
    out = capsys.readouterr()
    assert (hub / name).read_bytes() == payload
    assert "resnet18 [" in out.err and "100%" in out.err  # the progress bar
    assert os.listdir(hub) == [name]
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    assert any(line.split()[:2] == ["resnet18", "present"] for line in listing.splitlines())
    assert any(line.split()[:2] == ["digits_lenet", "embedded"] for line in listing.splitlines())
    assert len(listing.splitlines()) == 1 + len(explain.model_names())  # every model


def test_download_refuses_a_corrupt_file_and_leaves_nothing(server, hub, monkeypatch, capsys) -> None:
    root, base = server
    name = "resnet18-00000000.pth"  # the hash prefix cannot match
    (root / name).write_bytes(os.urandom(200_000))
    _serve_as(monkeypatch, f"{base}/{name}")
    assert cli.main(["download", "resnet18"]) == 1
    assert "invalid hash value" in capsys.readouterr().err
    assert not hub.exists() or os.listdir(hub) == []


def test_download_reports_a_refused_connection(hub, monkeypatch, capsys) -> None:
    _serve_as(monkeypatch, f"http://127.0.0.1:{_free_port()}/resnet18-12345678.pth")
    assert cli.main(["download", "resnet18"]) == 1
    err = capsys.readouterr().err
    assert "error: resnet18: Could not get the weights" in err and "refused" in err.lower()
    assert not hub.exists() or os.listdir(hub) == []
    assert cli.main(["download", "no_such_model"]) == 1


def test_report_grid_keeps_an_originals_proportions() -> None:
    sheet = rnd.grid([Image.new("RGB", (451, 300), "red")], tile=224)
    column = np.asarray(sheet)[:224, 112]
    red = np.flatnonzero((column == [255, 0, 0]).all(axis=1))
    assert len(red) == round(224 * 300 / 451)  # 149 rows, not squashed to 224


def test_cli_draws_on_the_original_when_asked(tmp_path) -> None:
    assert cli.main([str(CAT), "--on", "original", "--overlay-mode", "add", "--colormap", "cv2_jet",
                     "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "cat.json").read_text())
    assert summary["overlay_mode"] == "add" and summary["on"] == "original"
    with Image.open(tmp_path / summary["overlays"][0]) as pic:
        assert pic.size == (451, 300)


def test_faithfulness_and_learn_read_the_picture_as_explain_does(digits: explain.Model) -> None:
    light = ImageOps.invert(explain.load_image(SAMPLES_DIR / "digit_3.png"))
    r = explain.explain(digits, light)
    assert r.predictions[0][1] == "3"
    heat = r.heatmaps()[0]
    auto = explain.deletion_insertion(digits, light, 3, heat, steps=4, mode="deletion")
    forced = explain.deletion_insertion(digits, light, 3, heat, steps=4, mode="deletion", polarity="dark_on_light")
    assert auto.deletion[0] == pytest.approx(r.prob(3), abs=1e-5)
    assert forced.deletion[0] != pytest.approx(auto.deletion[0], abs=1e-3)
    wk = explain.walkthrough(digits, light, 3)
    assert wk.prob == pytest.approx(r.prob(3), abs=1e-5)
    assert explain.walkthrough(digits, light, 3, polarity="dark_on_light").prob != pytest.approx(wk.prob, abs=1e-3)
