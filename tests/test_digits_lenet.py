"""The embedded ``digits_lenet`` model, its preprocessing, samples and the state-dict checker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from explain.zoo.checks import check_state_dict
from explain.zoo.lenet import (
    DIGITS_INPUT_SIZE,
    METADATA_KEY,
    WEIGHTS_PATH,
    LeNet,
    digits_dataset,
    digits_to_tensor,
    digits_view,
    load_digits_lenet,
    read_digits_metadata,
    split_indices,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "assets" / "samples").glob("digit_*.png"))


@pytest.fixture(scope="module")
def loaded():
    return load_digits_lenet()


def _predict(model: nn.Module, img: Image.Image, preprocess: dict) -> int:
    with torch.no_grad():
        return int(model(digits_to_tensor(img, preprocess)).argmax(1))


# --------------------------------------------------------------------------- model and metadata


def test_categories_and_preprocess(loaded):
    model, categories, preprocess = loaded
    assert categories == [str(i) for i in range(10)]
    assert not model.training
    assert preprocess["input_size"] == DIGITS_INPUT_SIZE == 32
    assert preprocess["in_channels"] == 1
    assert preprocess["interpolation"] == "bilinear"
    assert preprocess["invert"] is True
    assert len(preprocess["mean"]) == len(preprocess["std"]) == 1
    assert 0.0 < preprocess["mean"][0] < 1.0 and 0.0 < preprocess["std"][0] < 1.0
    meta = read_digits_metadata()
    assert meta["trained_by"] == "scripts/train_digits_lenet.py"
    assert meta["test_accuracy"] >= 0.97


def test_architecture_is_cam_friendly():
    model = LeNet()
    feats = model.features(torch.zeros(1, 1, 32, 32))
    assert feats.shape[-2:] == (8, 8)
    assert isinstance(model.features[-1], nn.ReLU)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and isinstance(model.fc, nn.Linear)
    assert model.fc.in_features == feats.shape[1]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus) == 3
    assert not any(m.inplace for m in relus)
    calls: dict[str, int] = {}
    for name, m in model.named_modules():
        if name:
            m.register_forward_hook(lambda *_a, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert set(calls.values()) == {1} and len(calls) == len(list(model.named_modules())) - 1


def test_weights_file_is_small():
    assert WEIGHTS_PATH.stat().st_size < 1_000_000


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_pngs_are_recognised(loaded, path):
    model, categories, preprocess = loaded
    digit = re.fullmatch(r"digit_(\d)\.png", path.name).group(1)
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (128, 128)
        arr = np.asarray(img)
        assert arr.mean() > 127  # dark ink on white paper
        assert categories[_predict(model, img, preprocess)] == digit


def test_the_three_samples_exist():
    assert {p.name for p in SAMPLES} >= {"digit_0.png", "digit_3.png", "digit_7.png"}


def test_split_is_fixed_disjoint_and_stratified():
    _, labels = digits_dataset()
    train, test = split_indices(labels)
    assert len(train) + len(test) == len(labels) == 1797
    assert not set(train) & set(test)
    assert abs(len(test) / len(labels) - 0.2) < 0.01
    assert np.array_equal(split_indices(labels)[1], test)
    assert np.bincount(labels[test]).min() >= 30


def test_accuracy_on_test_split(loaded):
    model, _, preprocess = loaded
    images, labels = digits_dataset()
    _, test = split_indices(labels)
    x = torch.cat([digits_to_tensor(images[i], preprocess) for i in test])
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    assert (pred == labels[test]).mean() >= 0.95


def _drawing(digit: int, width: float, zoom: float) -> Image.Image:
    """A pen drawing on a white 280×280 canvas (unit coordinates, scaled about the centre)."""
    strokes = {
        0: [("ellipse", (0.3, 0.15, 0.7, 0.85))],
        1: [("line", [(0.45, 0.25), (0.55, 0.15), (0.55, 0.85)])],
        2: [("arc", (0.3, 0.12, 0.7, 0.5), 180, 400), ("line", [(0.68, 0.4), (0.3, 0.85), (0.72, 0.85)])],
        3: [("arc", (0.32, 0.12, 0.68, 0.5), 200, 450), ("arc", (0.3, 0.48, 0.7, 0.88), 270, 520)],
        4: [("line", [(0.6, 0.15), (0.28, 0.6), (0.75, 0.6)]), ("line", [(0.6, 0.35), (0.6, 0.88)])],
        5: [("line", [(0.68, 0.15), (0.35, 0.15), (0.32, 0.45)]), ("arc", (0.3, 0.4, 0.7, 0.86), 220, 500)],
        6: [("ellipse", (0.32, 0.48, 0.68, 0.86)), ("line", [(0.62, 0.14), (0.34, 0.62)])],
        7: [("line", [(0.28, 0.18), (0.72, 0.18), (0.45, 0.86)])],
        8: [("ellipse", (0.35, 0.12, 0.65, 0.48)), ("ellipse", (0.3, 0.48, 0.7, 0.88))],
        9: [("ellipse", (0.32, 0.12, 0.68, 0.5)), ("line", [(0.67, 0.3), (0.62, 0.88)])],
    }
    size = 280
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    w = int(width * size)

    def pt(x: float, y: float) -> tuple[float, float]:
        return ((0.5 + (x - 0.5) * zoom) * size, (0.5 + (y - 0.5) * zoom) * size)

    for kind, coords, *angles in strokes[digit]:
        if kind == "line":
            pts = [pt(*p) for p in coords]
            draw.line(pts, fill="black", width=w, joint="curve")
            for x, y in pts:
                draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill="black")
        else:
            box = (*pt(coords[0], coords[1]), *pt(coords[2], coords[3]))
            if kind == "ellipse":
                draw.ellipse(box, outline="black", width=w)
            else:
                draw.arc(box, angles[0], angles[1], fill="black", width=w)
    return img


def test_mostly_recognises_pen_drawings(loaded):
    """Users upload dark-on-white drawings, thinner and smaller than the training bitmaps."""
    model, _, preprocess = loaded
    cases = [(d, w, z) for d in range(10) for w in (0.05, 0.09) for z in (1.0, 0.75)]
    right = sum(_predict(model, _drawing(d, w, z), preprocess) == d for d, w, z in cases)
    assert right / len(cases) >= 0.8


# --------------------------------------------------------------------------- preprocessing


def test_digits_to_tensor_and_view(loaded):
    _, _, preprocess = loaded
    img = Image.new("RGB", (200, 120), "white")
    ImageDraw.Draw(img).line((100, 10, 100, 110), fill="black", width=12)
    x = digits_to_tensor(img, preprocess)
    assert x.shape == (1, 1, 32, 32) and x.dtype == torch.float32
    # White paper becomes the training background: 0 after inversion, then normalised.
    mean, std = preprocess["mean"][0], preprocess["std"][0]
    assert torch.isclose(x[0, 0, 0, 0], torch.tensor((0.0 - mean) / std), atol=1e-5)
    assert float(x.max()) > (0.9 - mean) / std  # the ink is the bright part
    view = digits_view(img, preprocess)
    assert view.mode == "RGB" and view.size == (32, 32)
    arr = np.asarray(view)
    assert arr[0, 0].tolist() == [255, 255, 255]  # not inverted: looks like the user's picture
    # The view is exactly what the tensor is made from.
    again = torch.from_numpy(np.asarray(view.convert("L"), dtype=np.float32) / 255.0)
    assert torch.allclose(x[0, 0], ((1.0 - again) - mean) / std, atol=1e-5)


def test_transparent_background_is_white_paper(loaded):
    _, _, preprocess = loaded
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line((32, 4, 32, 60), fill=(0, 0, 0, 255), width=6)
    flat = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(flat).line((32, 4, 32, 60), fill="black", width=6)
    assert torch.allclose(digits_to_tensor(rgba, preprocess), digits_to_tensor(flat, preprocess))


# --------------------------------------------------------------------------- state-dict checks


def test_check_state_dict_accepts_a_good_state():
    model = LeNet()
    check_state_dict(model, LeNet().state_dict(), source="good.safetensors")


def test_check_state_dict_wrong_shape():
    model = LeNet()
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(5, 64)
    with pytest.raises(ValueError) as err:
        check_state_dict(model, state, source="bad.safetensors")
    msg = str(err.value)
    assert msg.startswith("bad.safetensors does not fit LeNet:")
    assert "shape mismatch: fc.weight is (5, 64) in the file but (10, 64) in the model" in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_check_state_dict_missing_and_unexpected_keys():
    model = LeNet()
    state = dict(model.state_dict())
    del state["features.3.bias"]
    state["head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: features\.3\.bias; unexpected keys: head\.weight"):
        check_state_dict(model, state, source="x.pt")


def test_check_state_dict_lists_at_most_five_per_kind():
    with pytest.raises(ValueError) as err:
        check_state_dict(LeNet(), {}, source="empty.safetensors")
    msg = str(err.value)
    assert "missing keys: features.0.weight, features.0.bias" in msg
    assert "(and 3 more)" in msg  # 8 tensors, 5 named


def test_loader_rejects_a_corrupted_file(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(str(WEIGHTS_PATH))
    with safe_open(str(WEIGHTS_PATH), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata[METADATA_KEY])["categories"][0] == "0"
    state["features.6.weight"] = state["features.6.weight"][:, :16].contiguous()
    del state["fc.bias"]
    bad = tmp_path / "corrupt.safetensors"
    save_file(state, str(bad), metadata=metadata)
    with pytest.raises(ValueError) as err:
        load_digits_lenet(bad)
    msg = str(err.value)
    assert "corrupt.safetensors does not fit LeNet" in msg
    assert "missing keys: fc.bias" in msg
    assert "features.6.weight is (64, 16, 3, 3) in the file but (64, 32, 3, 3) in the model" in msg
