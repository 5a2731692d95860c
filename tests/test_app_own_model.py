"""The *Your model* page, driven through AppTest: uploaded weights become this session's model.

Expectations come from the engine: the same files read and built by ``explain.custom`` give the
predictions, error messages and layers the page must show.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle

import pytest
import torch
import torchvision
from app_helpers import escaped, image_captions, main_images, markdown_text, new_app, run_ok, widget
from streamlit.testing.v1 import AppTest

import explain
from explain import custom
from explain.samples import SAMPLES_DIR
from explain.zoo.lenet import WEIGHTS_PATH, LeNet
from ui import resources, share, state, widgets

PAGE = "pages/own_model.py"
DIGIT_LABELS = [f"digit {name}" for name in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")]
# Markup, a Markdown link and broken matplotlib mathtext (the top-5 chart draws the names).
HOSTILE_LABELS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[click](javascript:alert(1))", r"$\frac{$"]


def pth(obj: object) -> bytes:
    """``torch.save`` into bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def upload(at: AppTest, arch: str, weights: tuple[str, bytes], labels: tuple[str, bytes] | None = None) -> AppTest:
    """On the Your model page: choose ``arch``, upload the files and press "Load my model"."""
    at.switch_page(PAGE)
    run_ok(at)
    widget(at, "selectbox", state.OWN_ARCH).select(arch)
    widget(at, "file_uploader", state.OWN_WEIGHTS).set_value((*weights, "application/octet-stream"))
    if labels is not None:
        widget(at, "file_uploader", state.OWN_LABELS).set_value((*labels, "text/plain"))
    run_ok(at)
    [load] = [b for b in at.button if b.label == "Load my model"]
    load.click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def digits_model_from_engine(labels: list[str]) -> explain.Model:
    """What the page should build from the embedded digit weights: the engine's own reading of the file."""
    data = WEIGHTS_PATH.read_bytes()
    hints = custom.read_metadata(data)
    return explain.build_custom(
        custom.LENET, explain.read_state_dict(data, WEIGHTS_PATH.name), labels=labels,
        input_size=hints.get("input_size"), mean=hints.get("mean"), std=hints.get("std"),
        invert=bool(hints.get("invert")),
    )


def test_uploaded_digit_weights_and_labels_are_used_on_every_page() -> None:
    labels_text = "\n".join(DIGIT_LABELS).encode()
    at = upload(new_app(), custom.LENET, (WEIGHTS_PATH.name, WEIGHTS_PATH.read_bytes()), ("digits.txt", labels_text))
    assert not at.error, [e.value for e in at.error]

    # The picker offers and selects this session's model.
    mine = at.session_state[state.UPLOADED]
    picker = widget(at, "selectbox", state.MODEL)
    assert picker.value == mine.name
    assert picker.options[-1] == mine.label  # options are the picker's texts
    expected = digits_model_from_engine(DIGIT_LABELS)
    assert mine.model.num_classes == expected.num_classes and mine.model.default_layer == expected.default_layer
    text = markdown_text(at)
    assert f"**Classes:** {expected.num_classes}" in text and escaped(DIGIT_LABELS[3]) in text
    assert f"recommended {escaped(expected.default_layer)}" in text and "greyscale" in text

    # A greyscale model starts on a digit; the Explain page shows the engine's prediction with the labels.
    at.switch_page("pages/explain.py")
    run_ok(at)
    assert widget(at, "selectbox", state.SAMPLE).value == widgets.DIGIT_SAMPLE
    r = explain.explain(expected, explain.load_image(SAMPLES_DIR / widgets.DIGIT_SAMPLE))
    top_i, top_name, top_p = r.predictions[0]
    assert top_name == DIGIT_LABELS[top_i]
    assert widget(at, "selectbox", state.TARGET).value == top_i
    assert widget(at, "selectbox", state.LAYER).value == expected.default_layer
    assert f"'{escaped(top_name)}'" in markdown_text(at) and main_images(at) == 3
    # Nobody else can open this model: a link leaves it (and its layer and class) out.
    assert not {share.MODEL, share.LAYER, share.TARGET} & set(at.query_params)
    assert at.query_params[share.SAMPLE] == widgets.DIGIT_SAMPLE
    # The same weights and preprocessing as the embedded digit model: the same prediction.
    embedded = explain.explain(resources.get_model("digits_lenet"), explain.load_image(SAMPLES_DIR / widgets.DIGIT_SAMPLE))
    assert embedded.predictions[0][0] == top_i and embedded.predictions[0][2] == pytest.approx(top_p, abs=1e-5)

    at.switch_page("pages/compare_classes.py")
    run_ok(at)
    assert image_captions(at)[0].startswith(escaped(f"{top_i} · {top_name}"))

    # Back to the default model; the uploaded one stays on offer for this session only.
    at.switch_page(PAGE)
    run_ok(at)
    [back] = [b for b in at.button if b.label == "Back to the default model"]
    back.click()
    run_ok(at)
    assert widget(at, "selectbox", state.MODEL).value == explain.DEFAULT_MODEL
    assert mine.label in widget(at, "selectbox", state.MODEL).options
    other = run_ok(new_app())
    assert mine.label not in widget(other, "selectbox", state.MODEL).options


def test_hostile_class_names_are_shown_as_text() -> None:
    torch.manual_seed(0)
    net = LeNet(num_classes=len(HOSTILE_LABELS), in_channels=3)
    labels = json.dumps(HOSTILE_LABELS).encode()
    at = upload(new_app(), custom.LENET, ("tiny.pth", pth(net.state_dict())), ("names.json", labels))
    assert not at.error, [e.value for e in at.error]
    assert not at.get("html")
    text = markdown_text(at)
    for name in HOSTILE_LABELS:
        assert escaped(name) in text
    assert "<script" not in text.replace("\\<script", "") and "<img" not in text.replace("\\<img", "")

    at.switch_page("pages/explain.py")
    run_ok(at)
    m = at.session_state[state.UPLOADED].model
    r = explain.explain(m, explain.load_image(SAMPLES_DIR / widgets.DEFAULT_SAMPLE))
    assert widget(at, "selectbox", state.SAMPLE).value == widgets.DEFAULT_SAMPLE  # a colour model: the cat
    text = markdown_text(at)
    assert f"'{escaped(r.predictions[0][1])}'" in text
    assert "<script" not in text.replace("\\<script", "") and "<img" not in text.replace("\\<img", "")
    assert not at.get("html")


def _error_of(arch: str, name: str, data: bytes) -> str:
    """The engine's message for building ``arch`` from this file."""
    with pytest.raises(explain.ExplainError) as err:
        explain.build_custom(arch, explain.read_state_dict(data, name), source=name)
    return str(err.value)


@pytest.fixture(scope="module")
def resnet18_pth() -> bytes:
    return pth(torchvision.models.resnet18(weights=None).state_dict())


@pytest.mark.parametrize("arch, fragment", [("vgg16", "classifier.6.weight"), ("resnet50", "missing keys")])
def test_wrong_architecture_names_the_mismatching_keys(resnet18_pth: bytes, arch: str, fragment: str) -> None:
    expected = _error_of(arch, "r18.pth", resnet18_pth)
    assert fragment in expected
    at = upload(new_app(), arch, ("r18.pth", resnet18_pth))
    [error] = [e.value for e in at.error]
    assert escaped(expected) in error and escaped(fragment) in error
    assert state.UPLOADED not in at.session_state
    assert widget(at, "selectbox", state.MODEL).value == explain.DEFAULT_MODEL


def _corrupt_files() -> dict[str, tuple[str, bytes]]:
    real = pth(LeNet().state_dict())
    return {
        "random_bytes": ("noise.pth", bytes(range(256)) * 64),
        "truncated": ("half.pth", real[: len(real) // 2]),
        "bad_safetensors": ("broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 40),
        "empty": ("empty.pt", b""),
        # No Streamlit type filter (it fails before the script runs): the reader names the problem.
        "other_file_type": ("weights.zip", real),
    }


@pytest.mark.parametrize("case", list(_corrupt_files()))
def test_corrupt_weights_give_the_readers_message(case: str) -> None:
    name, data = _corrupt_files()[case]
    with pytest.raises(explain.WeightsMismatchError) as expected:
        explain.read_state_dict(data, name)
    at = upload(new_app(), custom.LENET, (name, data))
    [error] = [e.value for e in at.error]
    assert escaped(str(expected.value)) in error
    assert state.UPLOADED not in at.session_state


class CreatesFile:
    """Unpickled unsafely, this would create a file: the upload must refuse it without running it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.mark.parametrize("fmt", ["pickle", "torch_save"])
def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path: pathlib.Path, fmt: str) -> None:
    target = tmp_path / "pwned"
    payload = {"fc.weight": torch.zeros(10, 64), "extra": CreatesFile(target)}
    data = pickle.dumps(payload) if fmt == "pickle" else pth(payload)
    with pytest.raises(explain.WeightsMismatchError) as expected:
        explain.read_state_dict(data, "evil.pt")
    assert "refused" in str(expected.value)
    # It names what the pickle asked to import: Path.touch itself, or the getattr that reaches it.
    named = "pathlib.Path.touch" if fmt == "pickle" else "getattr"
    assert f"({named}" in str(expected.value), str(expected.value)
    at = upload(new_app(), custom.LENET, ("evil.pt", data))
    [error] = [e.value for e in at.error]
    assert escaped(str(expected.value)) in error and "refused" in error and "never loaded" in error
    assert escaped(named) in error
    assert not target.exists()
    assert state.UPLOADED not in at.session_state


def test_labels_that_do_not_fit_the_weights_say_so() -> None:
    data = WEIGHTS_PATH.read_bytes()
    with pytest.raises(explain.ExplainError) as expected:
        explain.build_custom(custom.LENET, explain.read_state_dict(data, WEIGHTS_PATH.name), labels=["a", "b"])
    at = upload(new_app(), custom.LENET, (WEIGHTS_PATH.name, data), ("two.txt", b"a\nb\n"))
    [error] = [e.value for e in at.error]
    assert escaped(str(expected.value)) in error
