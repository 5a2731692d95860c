"""The Audit page, driven headless through ``streamlit.testing.v1.AppTest``.

Expected figures come from the engine (``explain.audit`` on the same pictures, or a plain forward),
never hard-coded.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from app_helpers import markdown_text, new_app, run_ok, widget

import explain
from explain import demo
from ui import audit_view, resources, state

PAGE = "pages/audit.py"
RUN = "Run the audit"


def open_audit(model: str, pictures: str):
    at = new_app()
    at.switch_page(PAGE)
    run_ok(at)
    widget(at, "selectbox", state.MODEL).set_value(model)
    run_ok(at)
    widget(at, "radio", state.AUDIT_SET).set_value(pictures)
    return run_ok(at)


def click(at, label: str, index: int = 0):
    [b for b in at.button if b.label == label][index].click()
    return run_ok(at)


def metric(at, label: str) -> str:
    [m] = [m for m in at.metric if m.label == label]
    return m.value


def direct_accuracy(model_name: str, items) -> float:
    m = resources.get_model(model_name)
    x = torch.cat([m.view_and_tensor(img.convert("RGB"))[1] for _n, img, _y in items])
    pred = m.predict(x).argmax(1).numpy()
    return float((pred == np.array([y for _n, _i, y in items])).mean())


def test_shortcut_demo_on_the_page_finds_the_marker_and_opens_in_explain():
    at = open_audit("digits_shortcut", "shortcut")
    click(at, RUN)
    items = demo.shortcut_set()
    assert metric(at, "Pictures") == f"{len(items):,}"
    assert metric(at, "Accuracy") == f"{direct_accuracy('digits_shortcut', items):.1%}"
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 2
    for digit in demo.SHORTCUT_CLASSES:
        assert any(f"'{digit}'" in w and "bottom-right corner" in w for w in warnings)
    [cm] = [d for d in at.dataframe if d.value.shape == (10, 10)]
    assert int(cm.value.to_numpy().sum()) == len(items)
    assert sum(len(img.value) for img in at.main.image) >= 10 + audit_view.GALLERY_SIZE  # means + gallery
    # Filter: wrong predictions only; the count is the engine's.
    engine = explain.audit(resources.get_model("digits_shortcut"), items)
    wrong = int((engine.table["correct"] == False).sum())  # noqa: E712
    widget(at, "radio", state.AUDIT_FILTER).set_value("wrong")
    run_ok(at)
    assert f"{wrong:,} picture(s)" in markdown_text(at)
    first_wrong = engine.table[engine.table["correct"] == False]["file"].iloc[0]  # noqa: E712
    click(at, "Open in Explain")
    assert at.header[0].value == "Where did the model look?"
    assert f"Showing {first_wrong}".replace("_", "\\_") in markdown_text(at)


@pytest.mark.slow
def test_digits_set_on_the_page_accuracy_and_no_shortcut():
    at = open_audit("digits_lenet", "digits")
    click(at, RUN)
    items = demo.digits_set()
    assert metric(at, "Pictures") == f"{len(items):,}"
    assert metric(at, "Accuracy") == f"{direct_accuracy('digits_lenet', items):.1%}"
    assert not at.warning
    assert any("No shortcut found" in s.value for s in at.success)


def test_limits_give_a_clear_message(monkeypatch):
    monkeypatch.setattr(audit_view, "MAX_PICTURES", 100)
    at = open_audit("digits_lenet", "shortcut")
    [b for b in at.button if b.label == RUN][0].click()
    at.run()
    assert not at.exception
    [err] = [e.value for e in at.error]
    assert "360 pictures" in err and "limit of 100" in err


def test_cancel_keeps_what_is_done_and_the_next_run_goes_on(monkeypatch):
    asked = {"n": 0}

    def cancel_after_three_batches() -> bool:
        asked["n"] += 1
        return asked["n"] > 3

    monkeypatch.setattr(audit_view, "cancel_requested", cancel_after_three_batches)
    at = open_audit("digits_lenet", "shortcut")
    click(at, RUN)
    assert any("cancelled" in i.value for i in at.info)
    assert metric(at, "Pictures") == f"{3 * audit_view.BATCH_SIZE:,}"
    monkeypatch.setattr(audit_view, "cancel_requested", lambda: False)
    click(at, RUN)
    assert metric(at, "Pictures") == "360"
    assert f"{3 * audit_view.BATCH_SIZE:,} picture(s) were done in an earlier run" in markdown_text(at)


def test_uploads_with_bad_files_and_a_zip():
    at = open_audit("digits_lenet", audit_view.UPLOAD)
    pics = demo.digits_set("test")[:6]

    def png(img) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, img, _y in pics[3:]:
            zf.writestr(f"set/{name}", png(img))
        zf.writestr("../escape.png", png(pics[0][1]))
    files = [(pics[k][0].split("/")[1], png(pics[k][1]), "image/png") for k in range(3)]
    files += [("notes.png", b"hello", "image/png"), ("set.zip", archive.getvalue(), "application/zip")]
    widget(at, "file_uploader", state.AUDIT_UPLOAD).set_value(files)
    run_ok(at)
    click(at, RUN)
    assert metric(at, "Pictures") == "6"
    assert metric(at, "Could not be used") == "2"
    [failed] = [d for d in at.dataframe if list(d.value.columns) == ["file", "error"]]
    reasons = dict(zip(failed.value["file"], failed.value["error"]))
    assert "unsafe path" in reasons["../escape.png"] and "text" in reasons["notes.png"]
    expected = explain.audit(resources.get_model("digits_lenet"), [(n, d) for n, d, _t in files])
    assert metric(at, "Accuracy") == f"{expected.summary['accuracy']:.1%}"


def test_no_files_uploaded_says_what_to_do():
    at = open_audit("digits_lenet", audit_view.UPLOAD)
    [b for b in at.button if b.label == RUN][0].click()
    at.run()
    assert [e.value for e in at.error] == ["Upload some pictures (or a zip of them) first."]
