"""Bring-your-own-model: safe loading of uploaded weights into torchvision or LeNet architectures."""

from __future__ import annotations

import io
import json
import os
import pickle

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save as save_safetensors

import explain
from explain import custom
from explain.zoo.lenet import LeNet


def _pth(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_resnet18_state_dict_with_seven_classes_and_labels() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7)
    state = custom.read_state_dict(_pth(net.state_dict()), "mine.pth")
    labels = custom.read_labels(json.dumps([f"kind {i}" for i in range(7)]).encode(), "labels.json")
    m = custom.build_custom("resnet18", state, source="mine.pth", labels=labels)
    assert m.num_classes == 7 and m.categories[3] == "kind 3"
    assert m.default_layer == "layer4"
    img = Image.new("RGB", (64, 48), (120, 30, 200))
    r = explain.explain(m, img, targets=[2], method="gradcam")
    assert r.maps.shape == (1, 7, 7)
    # The loaded weights are really the uploaded ones.
    x = m.view_and_tensor(img)[1]
    with torch.no_grad():
        torch.testing.assert_close(m.module(x), net.eval()(x))


def test_training_checkpoint_and_dataparallel_prefix_are_unwrapped() -> None:
    net = LeNet(num_classes=4, in_channels=1)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    state = custom.read_state_dict(_pth(wrapped), "ckpt.pt")
    m = custom.build_custom(custom.LENET, state, labels=["a", "b", "c", "d"])
    assert m.num_classes == 4 and m.preprocess.in_channels == 1


def test_greyscale_torchvision_model_is_supported() -> None:
    net = torchvision.models.resnet18(num_classes=3)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    m = custom.build_custom("resnet18", custom.read_state_dict(_pth(net.state_dict()), "g.pth"))
    assert m.preprocess.in_channels == 1
    r = explain.explain(m, Image.new("RGB", (40, 40), "white"), targets=[1])
    assert torch.isfinite(r.maps).all()


def test_lenet_from_safetensors() -> None:
    net = LeNet(num_classes=5, in_channels=3)
    m = custom.build_custom(custom.LENET, custom.read_state_dict(save_safetensors(net.state_dict()), "l.safetensors"))
    assert m.num_classes == 5 and m.preprocess.in_channels == 3
    assert explain.get_method("cam").check(m, m.default_layer) is None  # GAP + one linear layer


def test_wrong_architecture_names_first_mismatches() -> None:
    state = custom.read_state_dict(_pth(torchvision.models.resnet18().state_dict()), "r18.pth")
    with pytest.raises(explain.WeightsMismatchError) as err:
        custom.build_custom("resnet50", state, source="r18.pth")
    msg = str(err.value)
    assert "r18.pth" in msg and "missing keys" in msg and "layer1.0.conv3.weight" in msg


def test_shape_mismatch_is_named() -> None:
    state = LeNet(num_classes=10).state_dict()
    state["features.3.weight"] = torch.zeros(32, 8, 5, 5)
    with pytest.raises(explain.WeightsMismatchError, match=r"features\.3\.weight"):
        custom.build_custom(custom.LENET, state)


@pytest.mark.parametrize(
    "data, name, fragment",
    [
        (b"", "empty.pth", "empty"),
        (b"not a zip at all" * 10, "junk.pth", "could not be read"),
        (b"\x00" * 64, "junk.safetensors", "not a valid .safetensors"),
        (b"PK\x03\x04truncated", "trunc.pt", "could not be read"),
        (b"abc", "weights.onnx", r"\.pt, \.pth, \.ckpt \(PyTorch Lightning\) or \.safetensors"),
    ],
)
def test_corrupt_files_give_clear_errors(data: bytes, name: str, fragment: str) -> None:
    with pytest.raises(explain.WeightsMismatchError, match=fragment):
        custom.read_state_dict(data, name)


def test_truncated_real_checkpoint_is_refused_cleanly() -> None:
    data = _pth(LeNet().state_dict())
    with pytest.raises(explain.WeightsMismatchError, match="could not be read"):
        custom.read_state_dict(data[: len(data) // 2], "half.pth")


class _CreatesFile:
    """Unpickling this (unsafely) would create a file: the exploit the upload must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("wrap", ["bare", "inside_state_dict"])
def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path, wrap: str) -> None:
    target = tmp_path / "pwned.txt"
    payload = _CreatesFile(str(target))
    obj = payload if wrap == "bare" else {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": payload}
    data = pickle.dumps(obj)  # a legacy (non-zip) pickle
    zipped = _pth(obj)  # torch.save's zip format
    for blob, name in ((data, "evil.pt"), (zipped, "evil.pth")):
        with pytest.raises(explain.WeightsMismatchError, match="refused") as err:
            custom.read_state_dict(blob, name)
        # The refusal names the import the pickle asked for (``open`` is ``io.open``).
        assert "(io.open)" in str(err.value), str(err.value)
    assert not target.exists()
    assert not os.path.exists("pwned.txt")


def test_labels_text_json_and_errors() -> None:
    assert custom.read_labels(b"cat\n\ndog\r\n<script>alert(1)</script>\n") == ["cat", "dog", "<script>alert(1)</script>"]
    assert custom.read_labels(b'["a", "b", 3]') == ["a", "b", "3"]
    with pytest.raises(explain.ExplainError, match="JSON"):
        custom.read_labels(b'["a", ')
    with pytest.raises(explain.ExplainError, match="UTF-8"):
        custom.read_labels(b"\xff\xfe\xfa")
    state = LeNet(num_classes=3).state_dict()
    with pytest.raises(explain.ExplainError, match="3 classes"):
        custom.build_custom(custom.LENET, state, labels=["only", "two"])


def test_unknown_architecture() -> None:
    with pytest.raises(explain.ExplainError, match="Unknown architecture"):
        custom.build_custom("not_a_net", LeNet().state_dict())
