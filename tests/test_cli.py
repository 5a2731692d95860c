"""The command line: files written, their contents, exit codes and one-line errors."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from PIL import Image

import explain
from explain import cli

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLES = REPO / "assets" / "samples"
CAT = SAMPLES / "cat.jpg"
COFFEE = SAMPLES / "coffee.jpg"
CATS = {"Egyptian cat", "tabby", "tiger cat"}

_LOADED: dict[tuple, explain.Model] = {}


@pytest.fixture(autouse=True)
def shared_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load each (model, weights) once for the whole file: the CLI path is unchanged, only faster.

    Failures are not cached, so error paths still run the real loader every time.
    """
    real = explain.load_model

    def cached(name: str = explain.DEFAULT_MODEL, weights: str | None = "default", **kw: Any) -> explain.Model:
        key = (name, weights)
        if key not in _LOADED:
            _LOADED[key] = real(name, weights=weights, **kw)
        return _LOADED[key]

    monkeypatch.setattr(cli, "load_model", cached)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- outputs ------------------------------------------------------------------------------------


def test_default_run_writes_json_maps_and_overlay(tmp_path: pathlib.Path, capsys) -> None:
    code, out, err = run(capsys, CAT, "--out", tmp_path)
    assert code == 0, err
    assert err == ""

    summary = read_json(tmp_path / "cat.json")
    assert summary["model"] == "efficientnet_lite0"
    assert summary["method"] == "gradcam"
    assert summary["layer"] == _LOADED[("efficientnet_lite0", "default")].default_layer
    assert summary["image"] == str(CAT)
    assert summary["fit"] == "squash"
    assert summary["normalize"] == "per_map"

    preds = summary["predictions"]
    assert len(preds) >= 5
    probs = [p["prob"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert sum(probs) <= 1.0 + 1e-6
    assert preds[0]["name"] in CATS
    assert set(preds[0]) == {"index", "name", "prob"}

    # Default target: the top-1 class, with its probability.
    assert summary["targets"] == [preds[0]]
    top = preds[0]["index"]

    maps = np.load(tmp_path / "cat_maps.npy")
    assert maps.dtype == np.float32
    assert maps.ndim == 3 and maps.shape[0] == 1
    assert maps.max() > 0  # Grad-CAM of the predicted class is not blank

    png = tmp_path / f"cat_gradcam_{top}.png"
    with Image.open(png) as pic:
        assert pic.format == "PNG"
        assert pic.mode == "RGB"
        assert pic.size == (224, 224)  # the model's view, which the overlay is drawn on (--on view)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cat.json", "cat_maps.npy", png.name])
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cat.jpg: ") and preds[0]["name"] in lines[0] and png.name in lines[0]


def test_explicit_targets_write_one_overlay_each_and_match_the_engine(tmp_path: pathlib.Path, capsys) -> None:
    code, out, err = run(capsys, CAT, "--targets", "281,245", "--out", tmp_path)
    assert code == 0, err
    summary = read_json(tmp_path / "cat.json")
    assert [t["index"] for t in summary["targets"]] == [281, 245]
    assert [t["name"] for t in summary["targets"]] == ["tabby", "French bulldog"]
    assert (tmp_path / "cat_gradcam_281.png").is_file()
    assert (tmp_path / "cat_gradcam_245.png").is_file()
    assert len(out.strip().splitlines()) == 2

    maps = np.load(tmp_path / "cat_maps.npy")
    model = _LOADED[("efficientnet_lite0", "default")]
    expected = explain.explain(model, explain.load_image(CAT), targets=[281, 245]).maps.numpy()
    assert maps.shape == expected.shape and maps.shape[0] == 2
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    # Each target's probability is the model's, not a placeholder.
    probs = {t["index"]: t["prob"] for t in summary["targets"]}
    np.testing.assert_allclose(probs[281], float(model.predict(model.view_and_tensor(explain.load_image(CAT))[1])[0, 281]), rtol=1e-4)


def test_class_names_are_accepted(tmp_path: pathlib.Path, capsys) -> None:
    code, _, err = run(capsys, CAT, "--targets", "Tabby, 285", "--out", tmp_path)
    assert code == 0, err
    assert [t["index"] for t in read_json(tmp_path / "cat.json")["targets"]] == [281, 285]


def test_top3_explains_the_three_best_classes_with_one_forward_pass(tmp_path: pathlib.Path, capsys) -> None:
    cli.main([str(CAT), "--out", str(tmp_path / "warm")])  # loads the model
    capsys.readouterr()
    model = _LOADED[("efficientnet_lite0", "default")]
    model.clear_cache()
    before = model.stats.forward_passes

    code, out, err = run(capsys, CAT, "--targets", "top3", "--method", "gradcam++", "--out", tmp_path)
    assert code == 0, err
    assert model.stats.forward_passes - before == 1  # the second explain() reuses the capture
    summary = read_json(tmp_path / "cat.json")
    top3 = [p["index"] for p in summary["predictions"][:3]]
    assert [t["index"] for t in summary["targets"]] == top3
    assert np.load(tmp_path / "cat_maps.npy").shape[0] == 3
    # '+' is not filename-friendly: gradcam++ is written as gradcampp.
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"cat_gradcampp_{i}.png" for i in top3)
    assert len(out.strip().splitlines()) == 3


def test_shared_normalization_changes_overlays_not_maps(tmp_path: pathlib.Path, capsys) -> None:
    per_map, shared = tmp_path / "per_map", tmp_path / "shared"
    # 285 'Egyptian cat' is the top class; 245 'French bulldog' has weak evidence in this photo.
    assert run(capsys, CAT, "--targets", "285,245", "--out", per_map)[0] == 0
    assert run(capsys, CAT, "--targets", "285,245", "--normalize", "shared", "--out", shared)[0] == 0
    assert read_json(shared / "cat.json")["normalize"] == "shared"
    np.testing.assert_array_equal(np.load(per_map / "cat_maps.npy"), np.load(shared / "cat_maps.npy"))

    raw = np.load(shared / "cat_maps.npy")
    weak = 0 if raw[0].max() < raw[1].max() else 1
    cls = (285, 245)[weak]
    a = np.asarray(Image.open(per_map / f"cat_gradcam_{cls}.png"), dtype=np.int16)
    b = np.asarray(Image.open(shared / f"cat_gradcam_{cls}.png"), dtype=np.int16)
    assert np.abs(a - b).mean() > 1.0  # the weaker map is drawn on the shared, larger scale


def test_torchvision_architecture_with_random_weights(tmp_path: pathlib.Path, capsys) -> None:
    code, out, err = run(capsys, CAT, "--model", "resnet18", "--weights", "none", "--layer", "layer3", "--out", tmp_path)
    assert code == 0, err
    assert out.startswith("cat.jpg: ")
    summary = read_json(tmp_path / "cat.json")
    assert summary["model"] == "resnet18"
    assert summary["layer"] == "layer3"
    assert summary["weights"] == "none"
    assert np.load(tmp_path / "cat_maps.npy").shape == (1, 14, 14)  # layer3 of a 224 input
    assert len(list(tmp_path.glob("cat_gradcam_*.png"))) == 1


def test_same_file_names_in_different_folders_do_not_overwrite(tmp_path: pathlib.Path, capsys) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    shutil.copy(CAT, tmp_path / "a" / "photo.jpg")
    shutil.copy(COFFEE, tmp_path / "b" / "photo.jpg")
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, tmp_path / "a" / "photo.jpg", tmp_path / "b" / "photo.jpg", "--out", out_dir)
    assert code == 0, err
    assert read_json(out_dir / "photo.json")["predictions"][0]["name"] in CATS
    assert read_json(out_dir / "photo_2.json")["predictions"][0]["name"] == "espresso"
    assert (out_dir / "photo_2_maps.npy").is_file()


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_images_are_reported_and_the_others_still_done(tmp_path: pathlib.Path, capsys) -> None:
    missing = tmp_path / "missing.jpg"
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, CAT, missing, text, COFFEE, "--out", out_dir)
    assert code == 1
    assert (out_dir / "cat.json").is_file() and (out_dir / "coffee.json").is_file()
    assert not (out_dir / "missing.json").exists() and not (out_dir / "notes.json").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {missing}: ") and "not found" in lines[0]
    assert lines[1].startswith(f"error: {text}: ") and "text" in lines[1]
    assert "Traceback" not in err
    assert len(out.strip().splitlines()) == 2  # one line per written overlay


def test_an_unexpected_failure_on_one_image_does_not_stop_the_batch(tmp_path: pathlib.Path, capsys, monkeypatch) -> None:
    real = cli._explain_one

    def flaky(model, method, args, image, *rest):
        if pathlib.Path(image).name == "cat.jpg":
            raise RuntimeError("simulated engine failure")
        return real(model, method, args, image, *rest)

    monkeypatch.setattr(cli, "_explain_one", flaky)
    out_dir = tmp_path / "out"
    code, _out, err = run(capsys, CAT, COFFEE, "--out", out_dir)
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {CAT}: unexpected RuntimeError") and "simulated engine failure" in line
    assert (out_dir / "coffee.json").is_file() and not (out_dir / "cat.json").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--method", "foo"], ["unknown method 'foo'", "gradcam"]),
        (["--model", "no_such_net"], ["no_such_net"]),
        (["--layer", "no.such.layer"], ["no.such.layer", "bn2"]),
        (["--targets", "1000"], ["1000", "0–999"]),
        (["--targets", "281,not a class"], ["not a class"]),
        (["--targets", "cardigan"], ["ambiguous", "264", "474"]),
        (["--targets", "top0"], ["top0"]),
        (["--targets", "top21"], ["top21"]),
        (["--targets", "281,,245"], ["--targets"]),
        (["--colormap", "rainbowz"], ["rainbowz", "viridis"]),
        (["--alpha", "1.5"], ["--alpha", "between 0 and 1"]),
        (["--normalize", "global"], ["global", "shared"]),
        (["--fit", "stretch"], ["stretch", "crop"]),
        (["--weights", "imagenet"], ["imagenet", "none"]),
        (["--model", "squeezenet1_0", "--weights", "none", "--method", "cam"], ["cam", "squeezenet1_0", "grad-cam"]),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_any_image(tmp_path: pathlib.Path, capsys, args, words) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, CAT, *args, "--out", out_dir)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w.lower() in lines[0].lower()
    assert "Traceback" not in err
    assert out == ""
    assert not out_dir.exists()  # nothing was processed


def test_missing_weights_exit_2_with_the_engine_message(tmp_path: pathlib.Path, capsys, monkeypatch) -> None:
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_args: object, **_kw: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code, _, err = run(capsys, CAT, "--model", "resnet18", "--out", tmp_path / "out")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "weights" in lines[0] and "resnet18" in lines[0] and "Traceback" not in err


def test_output_folder_that_is_a_file_is_a_usage_error(tmp_path: pathlib.Path, capsys) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    code, _, err = run(capsys, CAT, "--out", blocker)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(blocker) in err


def test_missing_out_is_one_line_and_help_documents_file_names(capsys) -> None:
    code, _, err = run(capsys, CAT)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "gradcampp" in out and "examples:" in out and "_maps.npy" in out


# ---- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "spec"), [("top1", cli.TargetSpec(top=1)), ("TOP20", cli.TargetSpec(top=20)),
                                            ("281, 245,281", cli.TargetSpec(classes=("281", "245")))])
def test_parse_targets(text: str, spec: cli.TargetSpec) -> None:
    assert cli.parse_targets(text) == spec


@pytest.mark.parametrize("text", ["", "top", "top0", "top21", ",", "1,,2"])
def test_parse_targets_rejects(text: str) -> None:
    with pytest.raises(cli.UsageError):
        cli.parse_targets(text)


def test_method_slugs_are_filename_safe_and_distinct() -> None:
    slugs = {m: cli.method_slug(m) for m in explain.METHODS}
    assert slugs["gradcam++"] == "gradcampp"
    assert all(s.isalnum() for s in slugs.values())
    assert len(set(slugs.values())) == len(slugs)


# ---- the real entry point -----------------------------------------------------------------------


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "explain", str(SAMPLES / "digit_3.png"), "--model", "digits_lenet",
         "--out", str(tmp_path), "--targets", "top2", "--method", "layercam"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = read_json(tmp_path / "digit_3.json")
    assert summary["predictions"][0]["name"] == "3"  # the embedded digit weights are real
    assert len(list(tmp_path.glob("digit_3_layercam_*.png"))) == 2
    assert np.load(tmp_path / "digit_3_maps.npy").shape[0] == 2
    assert "digit_3.png: 3 (" in proc.stdout
