"""Issue 10 through the dashboard (AppTest): the lesson's LeNet checkpoint uploaded on *Your model*,
digit polarity in the sidebar, weak and empty evidence on *Explain*, the lesson's classes."""

from __future__ import annotations

import io

import numpy as np
import torch
from app_helpers import escaped, markdown_text, new_app, run_ok, select_upload, widget
from course_helpers import lightning_checkpoint, mnist_style_digits, run_gradcam, trained_lesson_lenet
from PIL import Image, ImageOps
from test_app_own_model import upload
from torchvision.transforms.functional import to_tensor

import explain
from explain.samples import SAMPLES_DIR
from explain.zoo.lenet import WEIGHTS_PATH
from ui import course, resources, state
from ui import text as ui_text


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def infos(at) -> str:
    return "\n".join(i.value for i in at.info)


def test_lessons_lightning_checkpoint_through_the_page_equals_run_gradcam() -> None:
    net, _acc = trained_lesson_lenet()
    at = upload(new_app(), "mnist_lenet", ("epoch=5.ckpt", lightning_checkpoint(net)))
    assert not at.error, [e.value for e in at.error]
    mine = at.session_state[state.UPLOADED]
    text = markdown_text(at)
    assert "recommended conv.4" in text and "28×28 pixels" in text and "light strokes on a dark background" in text
    m = mine.model
    images, _labels = mnist_style_digits()
    digit = images[11]
    # The page's own settings explain it: upload the digit, explain at conv.4 with Grad-CAM.
    at.switch_page("pages/explain.py")
    select_upload(at)
    run_ok(at)
    widget(at, "file_uploader", state.UPLOAD).set_value(("digit.png", png_bytes(digit), "image/png"))
    run_ok(at)
    assert widget(at, "selectbox", state.MODEL).value == m.name
    assert widget(at, "selectbox", state.LAYER).value == "conv.4"
    target = widget(at, "selectbox", state.TARGET).value
    assert "Picture read as light strokes on a dark background (read from the picture)" in markdown_text(at)
    r = explain.explain(m, digit.convert("RGB"), targets=[target], layer="conv.4")
    want = run_gradcam(net, to_tensor(digit)[None], target, "conv.4")
    assert torch.allclose(r.maps[0], want, atol=1e-6, rtol=1e-5)


def test_polarity_picker_reads_and_overrides() -> None:
    at = new_app()
    run_ok(at)
    assert not [r for r in at.sidebar.radio if r.key == state.POLARITY]  # colour models: no such control
    widget(at, "selectbox", state.MODEL).select("digits_lenet")
    run_ok(at)
    select_upload(at)
    run_ok(at)
    light = ImageOps.invert(explain.load_image(SAMPLES_DIR / "digit_3.png"))  # MNIST's way round
    widget(at, "file_uploader", state.UPLOAD).set_value(("three.png", png_bytes(light), "image/png"))
    run_ok(at)
    assert widget(at, "selectbox", state.TARGET).value == 3
    caption = markdown_text(at)
    assert "Picture read as light strokes on a dark background (read from the picture)" in caption
    assert "so the picture was inverted for it" in caption
    widget(at, "radio", state.POLARITY).set_value("dark_on_light")
    run_ok(at)
    assert "Picture read as dark strokes on a light background (as set in the sidebar)" in markdown_text(at)
    m = resources.get_model("digits_lenet")
    wrong = explain.predict_top(m, light, polarity="dark_on_light")
    assert [b[0] for b in wrong] == [i for i, _n, _p in at.session_state[state.SELECTION].predictions]


def test_your_model_polarity_overrides_the_files_metadata() -> None:
    data = WEIGHTS_PATH.read_bytes()  # its metadata says: inverted (light-on-dark) input
    at = upload(new_app(), "lenet", (WEIGHTS_PATH.name, data))
    assert at.session_state[state.UPLOADED].model.preprocess.trained_polarity == "light_on_dark"
    widget(at, "radio", state.OWN_POLARITY).set_value("dark_on_light")
    run_ok(at)
    [load] = [b for b in at.button if b.label == "Load my model"]
    load.click()
    run_ok(at)
    assert at.session_state[state.UPLOADED].model.preprocess.trained_polarity == "dark_on_light"


def test_explain_says_how_weak_and_when_empty() -> None:
    at = new_app()
    run_ok(at)
    widget(at, "selectbox", state.TARGET).set_value(919)
    run_ok(at)
    m = resources.get_model(explain.DEFAULT_MODEL)
    cat = explain.load_image(SAMPLES_DIR / "cat.jpg")
    r = explain.explain(m, cat, targets=[919], relative=True)
    want = (f"The evidence for 'street sign' is {ui_text.percent(r.strength(0))} as strong as for the top class, "
            f"'{r.predictions[0][1]}'.")
    assert escaped(want) in markdown_text(at)
    # An all-zero map: a notice, and no caption claiming a highlighted region.
    cam = explain.get_method("cam").name
    every = explain.explain(m, cat, targets=list(range(1000)), method=cam)
    empty = next(c for k, c in enumerate(every.targets) if every.empty(k))
    widget(at, "selectbox", state.METHOD).set_value(cam)
    widget(at, "selectbox", state.TARGET).set_value(empty)
    run_ok(at)
    name = m.categories[empty]
    assert escaped(f"No part of the picture raises the score of '{name}' at this layer") in infos(at)
    assert "highlighted region" not in markdown_text(at)
    at.switch_page("pages/compare_classes.py")
    run_ok(at)
    at.multiselect(key=state.COMPARE_CLASSES).set_value([empty, 285])
    run_ok(at)
    assert escaped(f"No part of the picture raises the score of '{name}' at this layer") in infos(at)


def test_class_picker_offers_the_lesson_classes_and_corrects_them() -> None:
    at = new_app()
    run_ok(at)
    lesson = [b for b in at.sidebar.button if (b.key or "").startswith("cx.lesson.") and "fix" not in b.key]
    assert [int(b.key.rsplit(".", 1)[1]) for b in lesson] == [i for i, _l in course.LESSON_CLASSES]
    [b157] = [b for b in lesson if b.key == "cx.lesson.157"]
    b157.click()
    run_ok(at)
    assert widget(at, "selectbox", state.TARGET).value == 157
    assert "157 is 'papillon'; 'Siberian husky' is 250." in markdown_text(at)
    [fix] = [b for b in at.sidebar.button if b.key == "cx.lesson.fix.157"]
    fix.click()
    run_ok(at)
    assert widget(at, "selectbox", state.TARGET).value == 250


def test_sidebar_overlay_mode_reaches_the_page_pixel_exact(monkeypatch) -> None:
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    sent: list[bytes] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, data, mimetype, kind, filename=None):
        if isinstance(data, bytes) and mimetype == "image/png":
            sent.append(data)
        return original(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    at = new_app()
    at.query_params["overlay"] = "add"  # a lecturer's link carries the lesson's view
    at.query_params["rawcolormap"] = "bwr"
    run_ok(at)
    assert widget(at, "segmented_control", state.OVERLAY_MODE).value == "add"
    assert widget(at, "selectbox", state.RAW_COLORMAP).value == "bwr"
    widget(at, "selectbox", state.COLORMAP).set_value("cv2_jet")
    widget(at, "slider", state.HEAT_WEIGHT).set_value(0.3)
    widget(at, "slider", state.IMAGE_WEIGHT).set_value(0.5)
    sent.clear()
    run_ok(at)
    m = resources.get_model(explain.DEFAULT_MODEL)
    r = explain.explain(m, explain.load_image(SAMPLES_DIR / "cat.jpg"), relative=True)
    want = np.asarray(r.overlays(explain.RELATIVE, colormap="cv2_jet", mode="add", heat_weight=0.3, image_weight=0.5,
                                 on="original")[0])
    shown = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in sent]
    assert any(s.shape == want.shape and np.array_equal(s, want) for s in shown)
    assert "On the original picture, 451×300" in markdown_text(at)
