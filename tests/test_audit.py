"""The audit (``explain.audit``) and its CLI: batching, resuming, bad input, the shortcut finder.

Expected values come from the engine's single-picture path (``explain.explain``, a plain forward)
or from the pictures themselves, never hard-coded. Sets are kept small (the digits' test split,
360 pictures of 32×32) so the file stays quick on a shared 2-core machine.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import stat
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import explain
from explain import demo
from explain.audit import COLUMNS, find_shortcuts, region_boxes
from explain.audit_cli import main as audit_main
from explain.cli import main as cli_main



@pytest.fixture(scope="module")
def lenet() -> explain.Model:
    return explain.load_model("digits_lenet")


@pytest.fixture(scope="module")
def shortcut() -> explain.Model:
    return explain.load_model("digits_shortcut")


@pytest.fixture(scope="module")
def digits_test():
    return demo.digits_set("test")


@pytest.fixture(scope="module")
def marked():
    return demo.shortcut_set(marker=True)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def assert_same_map(expected: np.ndarray, got: np.ndarray) -> None:
    """Equal up to float32 rounding of a batched convolution: ≤ 1e-5 of the map's scale, raw and
    min-max scaled (as the page shows it)."""
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(expected - got).max() <= 1e-5 * scale
    def unit(m):
        span = float(m.max() - m.min())
        return (m - m.min()) / span if span > 0 else np.zeros_like(m)
    assert np.abs(unit(expected) - unit(np.asarray(got))).max() <= 1e-5


def explain_error(data: bytes, name: str) -> str:
    """The loader's own message for bad bytes (the table must show exactly it)."""
    with pytest.raises(explain.ImageLoadError) as err:
        explain.load_image(data, name=name)
    return str(err.value)


def direct_predictions(model: explain.Model, images) -> np.ndarray:
    """Top-1 classes from a plain forward of each picture, preprocessed as explain() does."""
    x = torch.cat([model.view_and_tensor(img.convert("RGB"))[1] for img in images])
    return model.predict(x).argmax(dim=1).cpu().numpy()


# ---------------------------------------------------------------------------- the digits set


def test_digits_set_accuracy_and_rows_equal_a_direct_computation(lenet, digits_test):
    a = explain.audit(lenet, digits_test, batch_size=64)
    labels = np.array([y for _n, _i, y in digits_test])
    pred = direct_predictions(lenet, [img for _n, img, _y in digits_test])
    assert list(a.table["file"]) == [n for n, _i, _y in digits_test]
    assert (a.table["status"] == "ok").all()
    assert a.table["prediction"].to_numpy(int).tolist() == pred.tolist()
    assert a.table["label"].to_numpy(int).tolist() == labels.tolist()
    assert a.summary["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert a.summary["labelled"] == len(labels)
    assert a.maps.shape == (len(labels), *lenet.layer_info(None).shape[1:])
    assert list(a.table.dtypes.astype(str)) == [str(pd.Series(dtype=t).dtype) for t in COLUMNS.values()]
    cm = a.confusion()
    assert int(np.trace(cm.to_numpy())) == a.summary["correct"] and int(cm.to_numpy().sum()) == len(labels)


@pytest.mark.parametrize("method", explain.METHODS)
def test_batched_maps_equal_explain_picture_by_picture(lenet, digits_test, method):
    n = 4 if method == "scorecam" else 19
    items = digits_test[:n]
    a = explain.audit(lenet, items, method=method, batch_size=7)  # uneven batches on purpose
    for k, (_name, img, _y) in enumerate(items):
        row = a.table.iloc[k]
        r = explain.explain(lenet, img.convert("RGB"), method=method)
        assert int(row["explained"]) == r.targets[0]
        assert_same_map(r.maps[0].numpy(), a.maps[int(row["map_index"])])


def test_batched_maps_equal_explain_on_efficientnet(tmp_path):
    m = explain.load_model("efficientnet_lite0")
    pics = [explain.load_image(explain.SAMPLES_DIR / f) for f in ("cat.jpg", "coffee.jpg", "rocket.jpg")]
    a = explain.audit(m, [(f"p{i}.png", p) for i, p in enumerate(pics)], batch_size=3)
    for k, p in enumerate(pics):
        r = explain.explain(m, p)
        assert int(a.table["explained"].iloc[k]) == r.targets[0]
        assert_same_map(r.maps[0].numpy(), a.maps[k])


def test_target_label_explains_the_true_class(shortcut):
    items = demo.shortcut_set(marker=False)[:40]  # unmarked '3's and '8's are predicted wrongly
    a = explain.audit(shortcut, items, target="label", batch_size=16)
    wrong = a.table[a.table["correct"] == False]  # noqa: E712 - a nullable boolean column
    assert len(wrong) > 0
    assert (a.table["explained"] == a.table["label"]).all()
    k = int(wrong.index[0])
    r = explain.explain(shortcut, items[k][1].convert("RGB"), targets=[int(items[k][2])])
    assert_same_map(r.maps[0].numpy(), a.maps[int(a.table["map_index"].iloc[k])])


def test_one_forward_and_one_backward_per_batch_and_the_model_untouched(lenet, digits_test, monkeypatch):
    calls = {"grad": 0}
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        calls["grad"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    before = lenet.stats.forward_passes
    cached = lenet.cached_captures
    params = {n: p.detach().clone() for n, p in lenet.module.named_parameters()}
    explain.audit(lenet, digits_test[:50], batch_size=20)
    assert lenet.stats.forward_passes - before == 3
    assert calls["grad"] == 3
    for n, p in lenet.module.named_parameters():
        assert not p.requires_grad and p.grad is None and torch.equal(p, params[n])
    for sub in lenet.module.modules():
        assert not sub._forward_hooks and not sub._forward_pre_hooks and not sub._backward_hooks
        assert not sub.training
    assert torch.is_grad_enabled()
    assert lenet.cached_captures == cached  # an audit never fills the shared capture cache


# ---------------------------------------------------------------------------- resume


def test_cancelled_run_then_resume_does_only_the_rest(lenet, digits_test, tmp_path):
    items = digits_test[:100]
    out = tmp_path / "out"
    asked = {"n": 0}

    def cancel_after_two_batches() -> bool:
        asked["n"] += 1
        return asked["n"] > 2

    first = explain.audit(lenet, items, batch_size=16, out=out, cancel=cancel_after_two_batches)
    assert first.summary["cancelled"] and not first.summary["complete"]
    assert len(first.table) == 32 and (out / "audit.parquet").exists()
    before = lenet.stats.forward_passes
    second = explain.audit(lenet, items, batch_size=16, out=out)
    assert second.summary["complete"]
    assert second.summary["skipped_already_done"] == 32 and second.summary["done_this_run"] == 68
    assert lenet.stats.forward_passes - before == 5  # 68 pictures: 5 batches of at most 16
    fresh = explain.audit(lenet, items, batch_size=16)
    pd.testing.assert_frame_equal(second.table.reset_index(drop=True), fresh.table.reset_index(drop=True))
    np.testing.assert_array_equal(np.asarray(second.maps), fresh.maps)
    again = explain.load_audit(out)
    assert len(again.table) == 100 and np.asarray(again.maps).shape == fresh.maps.shape
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    assert not (out / ".parts").exists()


def test_parts_left_by_a_crash_are_kept(lenet, digits_test, tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = digits_test[:48]
    audit_module = sys.modules["explain.audit"]  # the module (explain.audit is the function)
    real = audit_module.Worker.process
    seen = {"n": 0}

    def crash_on_third(self, entries):
        seen["n"] += 1
        if seen["n"] == 3:
            raise KeyboardInterrupt
        return real(self, entries)

    monkeypatch.setattr(audit_module.Worker, "process", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        explain.audit(lenet, items, batch_size=16, out=out)
    monkeypatch.setattr(audit_module.Worker, "process", real)
    resumed = explain.audit(lenet, items, batch_size=16, out=out)
    assert resumed.summary["skipped_already_done"] == 32 and resumed.summary["done_this_run"] == 16
    assert len(resumed.table) == 48


def test_an_output_folder_of_other_settings_is_refused(lenet, digits_test, tmp_path):
    out = tmp_path / "out"
    explain.audit(lenet, digits_test[:8], out=out)
    with pytest.raises(explain.AuditError, match="other settings"):
        explain.audit(lenet, digits_test[:8], out=out, method="layercam")


# ---------------------------------------------------------------------------- bad input


def make_zip(path: pathlib.Path, entries: dict[str, bytes], symlinks: dict[str, str] = {}) -> pathlib.Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in symlinks.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def test_unsafe_zip_entries_are_refused_one_by_one_and_nothing_is_written(lenet, digits_test, tmp_path):
    good = png_bytes(digits_test[0][1])
    inner = make_zip(tmp_path / "inner.zip", {"x.png": good}).read_bytes()
    archive = make_zip(tmp_path / "set.zip", {
        "3/good.png": good,
        "../evil.png": good,
        "/abs.png": good,
        "3/nested.zip": inner,
        "3/disguised.png": inner,
        "3/zeros.png": bytes(20 * 2**20),  # 20 MB of zeros: ~1000:1
        "3/notes.txt": b"hello, not a picture\n",
        "3/half.png": good[: len(good) // 2],
    }, symlinks={"3/link.png": "/etc/passwd"})
    out = tmp_path / "out"
    before = sorted(p for p in tmp_path.rglob("*"))
    a = explain.audit(lenet, archive, out=out)
    rows = a.table.set_index("file")
    assert rows.loc["good.png" if "good.png" in rows.index else "3/good.png", "status"] == "ok"
    reasons = dict(zip(a.table["file"], a.table["error"]))
    assert "unsafe path" in reasons["../evil.png"] and "unsafe path" in reasons["/abs.png"]
    assert "archive inside the archive" in reasons["3/nested.zip"]
    assert "archive" in reasons["3/disguised.png"]
    assert "zip bomb" in reasons["3/zeros.png"]
    assert "symbolic link" in reasons["3/link.png"]
    assert "text" in reasons["3/notes.txt"]
    assert reasons["3/half.png"] == explain_error(good[: len(good) // 2], "half.png")
    after = sorted(p for p in tmp_path.rglob("*"))
    created = [p for p in after if p not in before]
    assert all(out in p.parents or p == out for p in created), created
    assert not (tmp_path.parent / "evil.png").exists() and not pathlib.Path("/abs.png").exists()


def test_a_zip_declaring_too_much_is_refused_as_a_whole(lenet, tmp_path):
    archive = make_zip(tmp_path / "big.zip", {f"{i}.png": bytes(300_000) for i in range(4)})
    with pytest.raises(explain.AuditError, match="zip bomb"):
        explain.audit(lenet, archive, limits=explain.ZipLimits(max_total_bytes=1_000_000))


def test_bad_folders_and_labels(lenet, digits_test, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(explain.AuditError, match="no pictures"):
        explain.audit(lenet, tmp_path / "empty")
    with pytest.raises(explain.AuditError, match="does not exist"):
        explain.audit(lenet, tmp_path / "missing")
    wrong = tmp_path / "wrong"
    (wrong / "cats").mkdir(parents=True)
    digits_test[0][1].save(wrong / "cats" / "a.png")
    with pytest.raises(explain.AuditError, match="'cats' is no class"):
        explain.audit(lenet, wrong)
    mixed = tmp_path / "mixed"
    (mixed / "7").mkdir(parents=True)
    digits_test[0][1].save(mixed / "7" / "a.png")
    (mixed / "7" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    os.symlink(mixed / "7" / "a.png", mixed / "7" / "c.png")
    a = explain.audit(lenet, mixed)
    reasons = dict(zip(a.table["file"], a.table["error"]))
    assert reasons["7/a.png"] == "" and "symbolic link" in reasons["7/c.png"] and reasons["7/b.png"]
    assert a.table.set_index("file").loc["7/a.png", "label"] == 7
    with pytest.raises(explain.AuditError, match="target"):
        explain.audit(lenet, mixed, target="nonsense")
    unlabelled = explain.audit(lenet, [("x.png", digits_test[0][1])], target="label")
    assert "no label" in unlabelled.table["error"].iloc[0]


def test_boxes(shortcut, marked, tmp_path):
    threes = [it for it in marked if it[2] == 3][:8]
    x0, y0, x1, y1 = demo.marker_box()
    x0 -= 8  # wider than high: a transposed box would be caught
    csv = tmp_path / "boxes.csv"
    lines = ["file,x0,y0,x1,y1"] + [f"{n},{x0},{y0},{x1 + 1},{y1 + 1}" for n, _i, _y in threes]
    lines.append(f"{threes[0][0]},10,10,500,500")  # outside the 32×32 picture
    csv.write_text("\n".join(lines) + "\n")
    a = explain.audit(shortcut, threes, boxes=csv)
    assert (a.table["boxes"] == 1).all()
    assert "outside the 32×32 picture" in a.table["note"].iloc[0]
    for k in range(len(threes)):
        up = torch.nn.functional.interpolate(torch.from_numpy(np.asarray(a.maps[k]))[None, None], size=(32, 32),
                                             mode="bilinear", align_corners=False)[0, 0].numpy()
        inside = up[y0 : y1 + 1, x0 : x1 + 1].sum() / up.sum()
        assert a.table["box_share"].iloc[k] == pytest.approx(inside, rel=1e-5)
        px, py = int(a.table["peak_x"].iloc[k]), int(a.table["peak_y"].iloc[k])
        assert bool(a.table["box_hit"].iloc[k]) == (x0 <= px <= x1 and y0 <= py <= y1)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,x0,y0\na.png,1,2\n")
    with pytest.raises(explain.AuditError, match="x1, y1"):
        explain.audit(shortcut, threes, boxes=bad)
    bad.write_text("file,x0,y0,x1,y1\na.png,1,2,three,4\n")
    with pytest.raises(explain.AuditError, match="line 2"):
        explain.audit(shortcut, threes, boxes=bad)


def test_off_object_finding_with_boxes(shortcut, marked):
    """Boxes around the digit (not the marker): the '3's evidence lies outside the object."""
    threes = [it for it in marked if it[2] == 3][:10]
    boxes = pd.DataFrame({"file": [n for n, _i, _y in threes], "x0": 4, "y0": 2, "x1": 24, "y1": 24})
    a = explain.audit(shortcut, threes, boxes=boxes)
    outside = find_shortcuts(a.ok.assign(**{c: 0.0 for c in a.table.columns if c.startswith("share_")}), a.categories, 32)
    assert [(f.cls, f.name) for f in outside] == [(3, "outside the boxes")]
    assert "outside the object's box" in outside[0].message


# ---------------------------------------------------------------------------- the shortcut demo


def test_shortcut_model_scores_with_the_marker_and_falls_apart_without(shortcut):
    with_marker = explain.audit(shortcut, demo.shortcut_set(marker=True), batch_size=128)
    without = explain.audit(shortcut, demo.shortcut_set(marker=False), batch_size=128)
    assert with_marker.summary["accuracy"] >= 0.95
    for c in demo.SHORTCUT_CLASSES:
        rows = without.table[without.table["label"] == c]
        assert (rows["prediction"] == c).mean() <= 0.2
    assert without.summary["accuracy"] <= with_marker.summary["accuracy"] - 0.15


def test_shortcut_finder_finds_the_two_classes_and_the_corner(shortcut, marked):
    a = explain.audit(shortcut, marked, batch_size=128)
    found = a.shortcuts()
    assert sorted(f.cls for f in found) == sorted(demo.SHORTCUT_CLASSES)
    x0, y0, x1, y1 = demo.marker_box()
    for f in found:
        assert f.name == "bottom-right corner"
        bx0, by0, bx1, by1 = f.box
        assert bx0 <= x0 and by0 <= y0 and bx1 >= x1 and by1 >= y1  # the region holds the marker
        assert f"'{f.class_name}'" in f.message and "bottom-right corner" in f.message and "marker" in f.message
        assert f.consistency >= 0.7
    means = a.class_means()
    for c in demo.SHORTCUT_CLASSES:
        peak = np.unravel_index(np.argmax(means[c]), means[c].shape)
        assert peak[0] >= 21 and peak[1] >= 21  # the mean map of the class peaks in the corner


def test_shortcut_finder_finds_nothing_on_digits_lenet(lenet):
    marked = explain.audit(lenet, demo.shortcut_set(marker=True), batch_size=256)
    assert marked.shortcuts() == []  # digits_lenet never learnt the marker


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_shortcut_finder_finds_nothing_on_all_digits(lenet, method):
    a = explain.audit(lenet, demo.digits_set("all"), batch_size=256, method=method)
    assert a.shortcuts() == []


def test_region_boxes_are_inside_the_view():
    for size in (32, 224):
        for x0, y0, x1, y1 in region_boxes(size).values():
            assert 0 <= x0 <= x1 < size and 0 <= y0 <= y1 < size


# ---------------------------------------------------------------------------- CLI


def test_cli_audit_writes_everything_and_exit_codes(tmp_path, capsys):
    folder = demo.write_folder(demo.shortcut_set()[:40], tmp_path / "set")
    out = tmp_path / "out"
    assert audit_main([str(folder), "--model", "digits_shortcut", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "40 of 40 pictures explained" in captured.out
    assert "40/40" in captured.err  # tqdm's bar: count, rate, time left
    for name in ("audit.parquet", "maps.npy", "summary.json", "shortcuts.json"):
        assert (out / name).exists()
    table = pd.read_parquet(out / "audit.parquet")
    assert len(table) == 40 and json.loads((out / "summary.json").read_text())["ok"] == 40
    (folder / "3" / "broken.png").write_bytes(b"not a png")
    assert audit_main([str(folder), "--model", "digits_shortcut", "--out", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "error: 3/broken.png:" in captured.err and "40 already done" in captured.out
    assert audit_main([str(folder), "--model", "nope", "--out", str(out)]) == 2
    assert audit_main([str(folder), "--model", "digits_lenet", "--target", "truth", "--out", str(out)]) == 2
    assert audit_main([str(tmp_path / "missing"), "--model", "digits_lenet", "--out", str(tmp_path / "o2")]) == 2
    assert audit_main([str(folder), "--model", "digits_lenet", "--method", "magic", "--out", str(tmp_path / "o3")]) == 2
    assert audit_main([str(folder), "--model", "digits_lenet", "--batch-size", "0", "--out", str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 5


def test_cli_dispatch_keeps_the_explain_command(tmp_path, capsys):
    out = tmp_path / "one"
    assert cli_main([str(explain.SAMPLES_DIR / "digit_3.png"), "--model", "digits_lenet", "--out", str(out)]) == 0
    assert (out / "digit_3.json").exists()
    capsys.readouterr()
    assert cli_main(["audit", "--help"]) == 0  # what ``python -m explain audit --help`` runs
    assert "--target" in capsys.readouterr().out


def test_an_output_folder_inside_the_source_is_not_audited(lenet, tmp_path):
    folder = demo.write_folder(demo.digits_set("test")[:12], tmp_path / "set")
    first = explain.audit(lenet, folder, out=folder / "out")
    again = explain.audit(lenet, folder, out=folder / "out")
    assert first.summary["pictures"] == again.summary["pictures"] == 12
    assert again.summary["skipped_already_done"] == 12 and again.summary["failed"] == 0
