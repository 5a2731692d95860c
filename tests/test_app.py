"""The Streamlit dashboard, driven headless through ``streamlit.testing.v1.AppTest``.

Every expectation comes from the engine (its predictions, layers, error messages), so these tests
check that the dashboard shows what the engine computes, and that it stays usable when the user
hands it something broken. The model cache (``st.cache_resource``) is process-wide, so the model
the app uses is the one ``ui.resources.get_model`` returns here: forward passes are counted on it.
"""

from __future__ import annotations

import pathlib
import urllib.error

import pytest
import tomllib
import torch
from app_helpers import (
    REPO,
    animated_gif,
    bad_uploads,
    engine_predictions,
    escaped,
    image_captions,
    main_images,
    markdown_text,
    new_app,
    run_ok,
    sample_bytes,
    select_upload,
    widget,
)
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
from streamlit.testing.v1 import AppTest

import explain
from ui import page, pictures, resources, state, widgets
from ui import text as ui_text

DEFAULT = explain.DEFAULT_MODEL
CAT = "cat.jpg"


@pytest.fixture(scope="module")
def model() -> explain.Model:
    """The default model, as cached for the app."""
    return resources.get_model(DEFAULT)


def top(sample: str = CAT, model_name: str = DEFAULT) -> tuple[int, str, float]:
    return engine_predictions(model_name, sample)[0]


# ---- pages render ---------------------------------------------------------------------------------


def test_explain_page_renders_default_model_and_cat(model: explain.Model) -> None:
    at = run_ok(new_app())
    index, name, prob = top()
    assert widget(at, "selectbox", state.MODEL).value == DEFAULT
    assert widget(at, "selectbox", state.SAMPLE).value == CAT
    assert widget(at, "selectbox", state.TARGET).value == index
    assert widget(at, "selectbox", state.LAYER).value == model.default_layer
    assert main_images(at) == 3  # model view, raw map (matplotlib), overlay
    text = markdown_text(at)
    assert f"The model is {ui_text.percent(prob)} sure this is" in text
    assert f"'{escaped(name)}'" in text
    h, w = model.layer_info(model.default_layer).shape[1:]
    assert f"{h}×{w} at layer {escaped(model.default_layer)}" in text
    assert {b.label for b in at.get("download_button")} == {"Download overlay (PNG)", "Download raw map (.npy)",
                                                        "Download report (.zip)"}
    # The top-5 chart and the gallery are in the sidebar, whatever the page.
    assert len(at.sidebar.image) >= 1


def test_compare_classes_page(model: explain.Model) -> None:
    at = new_app()
    at.switch_page("pages/compare_classes.py")
    run_ok(at)
    preds = engine_predictions(DEFAULT, CAT)
    expected = [escaped(f"{ui_text.class_label(model.categories, i)} — {ui_text.percent(p)}") for i, _n, p in preds]
    assert image_captions(at)[: len(expected)] == expected
    assert main_images(at) == len(preds)

    widget(at, "multiselect", state.COMPARE_CLASSES).unselect(preds[-1][0])
    run_ok(at)
    assert main_images(at) == len(preds) - 1

    [course] = [b for b in at.button if b.label == "Lesson classes"]
    course.click()
    run_ok(at)
    wanted = [157, 162, 245, 281, 285, 360, 537, 799, 918]  # the lesson's own ids, all nine
    assert widget(at, "multiselect", state.COMPARE_CLASSES).value == wanted
    captions = image_captions(at)
    for i in wanted:
        assert any(escaped(ui_text.class_label(model.categories, i)) in c for c in captions), i
    # Where the lesson's label is wrong the page says so, with the right id one click away.
    notes = " ".join(c.value for c in at.main.caption)
    assert "The lesson calls 157 'Siberian husky', but 157 is 'papillon'; 'Siberian husky' is 250." in notes.replace("\\", "")
    assert "918 is 'crossword puzzle'; 'street sign' is 919" in notes
    [fix] = [b for b in at.button if b.label == "Use 919"]
    fix.click()
    run_ok(at)
    assert widget(at, "multiselect", state.COMPARE_CLASSES).value == wanted[:-1] + [919]
    per_map = [img.value for img in at.main.image]

    widget(at, "toggle", state.SHARED_SCALE).set_value(True)
    run_ok(at)
    assert widget(at, "radio", state.NORMALIZE).value == "shared"  # mirrored into the sidebar
    shared = [img.value for img in at.main.image]
    assert len(shared) == len(per_map) and shared != per_map  # one colour scale changes the tiles

    # Shared controls keep their values on another page.
    at.switch_page("pages/explain.py")
    run_ok(at)
    assert widget(at, "radio", state.NORMALIZE).value == "shared"
    assert main_images(at) == 3


def test_compare_methods_page_shows_why_cam_does_not_apply(model: explain.Model) -> None:
    at = new_app()
    at.switch_page("pages/compare_methods.py")
    run_ok(at)
    methods = widget(at, "multiselect", state.COMPARE_METHODS).value
    layers = widget(at, "multiselect", state.COMPARE_LAYERS).value
    assert "cam" in methods and layers == widgets.grid_default_layers(model)
    applicable, refused = [], []
    for layer in layers:
        for method in methods:
            try:
                explain.get_method(method).check(model, layer)
                applicable.append(escaped(f"{explain.TITLES[method]} · {layer}"))
            except explain.MethodNotApplicableError:
                refused.append(layer)
    assert refused, "the default grid should include a layer where CAM does not apply"
    assert image_captions(at) == applicable
    reasons = [c.value for c in at.main.caption if "does not apply" in c.value]
    assert len(reasons) == len(refused)
    for layer, reason in zip(refused, reasons):
        assert reason.startswith("CAM does not apply") and escaped(layer) in reason


# ---- forward passes ------------------------------------------------------------------------------


def test_display_class_and_method_changes_reuse_the_forward_pass(model: explain.Model) -> None:
    model.clear_cache()
    at = new_app()
    before = model.stats.forward_passes
    run_ok(at)
    # The sidebar's top-5 and the page's map share one capture: a single forward pass.
    assert model.stats.forward_passes == before + 1
    n = model.stats.forward_passes

    def overlay_url() -> str:
        return at.main.image[-1].value[0]

    for kind, key, value in (
        ("selectbox", state.COLORMAP, "viridis"),
        ("slider", state.ALPHA, 0.8),
        ("slider", state.SMOOTH, 6),
        ("radio", state.NORMALIZE, "shared"),
        ("checkbox", state.CONTOUR, True),
    ):
        old = overlay_url()
        widget(at, kind, key).set_value(value)
        run_ok(at)
        assert widget(at, kind, key).value == value
        assert model.stats.forward_passes == n, f"changing {key} ran the model again"
        if key != state.NORMALIZE:  # one map looks the same on either scale
            assert overlay_url() != old, f"changing {key} did not change the overlay"

    preds = engine_predictions(DEFAULT, CAT)
    other_i, other_name, other_p = preds[2]
    widget(at, "selectbox", state.TARGET).select(other_i)
    run_ok(at)
    assert model.stats.forward_passes == n
    text = markdown_text(at)
    assert f"The model's top guess is {escaped(preds[0][1])} ({ui_text.percent(preds[0][2])})" in text
    assert f"for '{escaped(other_name)}' ({ui_text.percent(other_p)})" in text

    for method in ("gradcam++", "layercam"):
        old = overlay_url()
        widget(at, "selectbox", state.METHOD).select(method)
        run_ok(at)
        assert model.stats.forward_passes == n, f"switching to {method} ran the model again"
        assert f"Raw {explain.TITLES[method]} map" in markdown_text(at)
        # The overlay itself changed, not only its heading (the maps of these methods differ here).
        assert overlay_url() != old, f"switching to {method} did not change the overlay"

    layer = widgets.grid_default_layers(model)[0]
    assert layer != model.default_layer
    widget(at, "selectbox", state.LAYER).select(layer)
    run_ok(at)
    assert model.stats.forward_passes == n + 1
    h, w = model.layer_info(layer).shape[1:]
    assert f"{h}×{w} at layer {escaped(layer)}" in markdown_text(at)
    assert widget(at, "selectbox", state.TARGET).value == other_i  # the class stays


def test_explain_page_says_why_a_method_does_not_apply(model: explain.Model) -> None:
    at = run_ok(new_app())
    layer = next(n for n in widgets.grid_default_layers(model) if model.layer_info(n).cam_linear is None)
    widget(at, "selectbox", state.METHOD).select("cam")
    widget(at, "selectbox", state.LAYER).select(layer)
    run_ok(at)
    with pytest.raises(explain.MethodNotApplicableError) as reason:
        explain.get_method("cam").check(model, layer)
    assert [w.value for w in at.warning] == [escaped(str(reason.value))]
    assert main_images(at) == 0
    widget(at, "selectbox", state.LAYER).select(model.default_layer)  # CAM is exact at the default
    run_ok(at)
    assert not at.warning and main_images(at) == 3


# ---- images ----------------------------------------------------------------------------------------


def test_upload_replaces_the_image_and_resets_the_class() -> None:
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    assert "Nothing chosen yet" in markdown_text(at)
    assert main_images(at) == 3  # still the cat
    widget(at, "file_uploader", state.UPLOAD).set_value(("my coffee.jpg", sample_bytes("coffee.jpg"), "image/jpeg"))
    run_ok(at)
    index, _name, prob = top("coffee.jpg")
    assert widget(at, "selectbox", state.TARGET).value == index
    assert f"The model is {ui_text.percent(prob)} sure this is" in markdown_text(at)
    assert "my coffee.jpg" in markdown_text(at)
    assert main_images(at) == 3


def test_camera_photo_is_explained() -> None:
    at = run_ok(new_app())
    widget(at, "segmented_control", state.IMAGE_SOURCE).set_value("Camera")
    run_ok(at)
    widget(at, "camera_input", state.CAMERA).set_value(("photo.jpg", sample_bytes("coffee.jpg"), "image/jpeg"))
    run_ok(at)
    index, name, _p = top("coffee.jpg")
    assert widget(at, "selectbox", state.TARGET).value == index
    assert f"'{escaped(name)}'" in markdown_text(at) and "camera photo" in markdown_text(at)


@pytest.mark.parametrize("case", list(bad_uploads()))
def test_bad_upload_shows_the_loaders_message_and_keeps_the_image(case: str) -> None:
    filename, data = bad_uploads()[case]
    with pytest.raises(explain.ImageLoadError) as expected:
        explain.load_image(data, name=filename)
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    widget(at, "file_uploader", state.UPLOAD).set_value((filename, data, "application/octet-stream"))
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert escaped(str(expected.value)) in error
    assert "Still showing Cat" in error
    # The previous picture is still explained.
    assert main_images(at) == 3
    assert f"'{escaped(top()[1])}'" in markdown_text(at)
    # And the next good file is used.
    widget(at, "file_uploader", state.UPLOAD).set_value(("flower.jpg", sample_bytes("flower.jpg"), "image/jpeg"))
    run_ok(at)
    assert widget(at, "selectbox", state.TARGET).value == top("flower.jpg")[0]


def test_any_file_type_reaches_the_loader_and_gets_its_message() -> None:
    """No Streamlit type filter (it would fail before the script runs): the loader judges the bytes."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
    with pytest.raises(explain.ImageLoadError) as expected:
        explain.load_image(svg, name="logo.svg")
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    widget(at, "file_uploader", state.UPLOAD).set_value(("logo.svg", svg, "image/svg+xml"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [error] = [e.value for e in at.error]
    assert escaped(str(expected.value)) in error
    assert main_images(at) == 3  # the previous picture is still explained
    # A real photo with a misleading extension is still a photo.
    widget(at, "file_uploader", state.UPLOAD).set_value(("flower.txt", sample_bytes("flower.jpg"), "text/plain"))
    run_ok(at)
    assert widget(at, "selectbox", state.TARGET).value == top("flower.jpg")[0]


def test_animated_gif_uses_its_first_frame(model: explain.Model) -> None:
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    gif = animated_gif()
    widget(at, "file_uploader", state.UPLOAD).set_value(("blink.gif", gif, "image/gif"))
    run_ok(at)
    assert [i.value for i in at.info] == ["Animated image: using its first frame."]
    expected = explain.explain(model, explain.load_image(gif)).predictions[0]
    assert widget(at, "selectbox", state.TARGET).value == expected[0]
    assert main_images(at) == 3


def test_file_names_are_shown_as_text_not_html() -> None:
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    name = "<img src=x onerror=alert(1)>[click](javascript:alert(1)).jpg"
    widget(at, "file_uploader", state.UPLOAD).set_value((name, sample_bytes("coffee.jpg"), "image/jpeg"))
    run_ok(at)
    assert not at.get("html")
    text = markdown_text(at)
    assert escaped(name) in text
    assert "<img" not in text.replace("\\<img", "")


def test_no_source_renders_html() -> None:
    sources = [REPO / "app.py", *sorted((REPO / "pages").glob("*.py")), *sorted((REPO / "ui").glob("*.py"))]
    for path in sources:
        assert "unsafe_allow_html" not in path.read_text(), path


# ---- models ----------------------------------------------------------------------------------------


def test_model_without_weights_shows_the_file_and_keeps_the_previous_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    # An empty hub cache and no network, whatever machine runs this.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    info = resources.model_infos()["resnet18"]
    assert not info.cached and widgets.model_label(info).startswith("resnet18 (download ~")

    at = run_ok(new_app())
    widget(at, "selectbox", state.MODEL).select("resnet18")
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert escaped(info.weights_file) in error and escaped(explain.checkpoint_dir()) in error
    assert f"Still using {escaped(DEFAULT)}" in error
    assert widget(at, "selectbox", state.MODEL).value == DEFAULT
    assert main_images(at) == 3
    assert f"'{escaped(top()[1])}'" in markdown_text(at)
    run_ok(at)  # the message belongs to that one attempt; the app carries on
    assert widget(at, "selectbox", state.MODEL).value == DEFAULT


def test_digit_model_gets_a_digit_its_layer_and_its_class(monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_ok(new_app())
    widget(at, "selectbox", state.MODEL).select("digits_lenet")
    run_ok(at)
    digits = resources.get_model("digits_lenet")
    assert widget(at, "selectbox", state.SAMPLE).value == widgets.DIGIT_SAMPLE
    assert widget(at, "selectbox", state.LAYER).value == digits.default_layer
    index, name, _p = top(widgets.DIGIT_SAMPLE, "digits_lenet")
    assert widget(at, "selectbox", state.TARGET).value == index
    assert f"'{escaped(name)}'" in markdown_text(at)
    # Score-CAM (one masked pass per channel) is quick on the small model; it runs with a bar.
    from streamlit.delta_generator import DeltaGenerator

    bars: list[tuple[float, str]] = []
    real_progress = DeltaGenerator.progress

    def progress(self, value, text=None, **kwargs):
        bars.append((float(value), str(text)))
        return real_progress(self, value, text=text, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "progress", progress)
    widget(at, "selectbox", state.METHOD).select("scorecam")
    run_ok(at)
    assert "Raw Score-CAM map" in markdown_text(at) and main_images(at) == 3
    # The bar was drawn and filled as the masked passes went (it is removed when the map is done).
    assert len(bars) >= 2 and bars[0][0] == 0.0 and bars[-1][0] == 1.0, bars
    assert "extra passes" in bars[-1][1] and [v for v, _t in bars] == sorted(v for v, _t in bars)
    monkeypatch.undo()

    widget(at, "selectbox", state.METHOD).select("gradcam")  # Score-CAM on the big model takes minutes
    widget(at, "selectbox", state.MODEL).select(DEFAULT)
    run_ok(at)
    assert widget(at, "selectbox", state.SAMPLE).value == widgets.DEFAULT_SAMPLE
    assert widget(at, "selectbox", state.LAYER).value == resources.get_model(DEFAULT).default_layer


# ---- helpers ---------------------------------------------------------------------------------------


def test_captions_for_top_class_other_class_and_saliency(model: explain.Model) -> None:
    image = explain.load_image(explain.samples.SAMPLES_DIR / CAT)
    r = explain.explain(model, image)
    (_i0, n0, p0), (i1, n1, p1) = r.predictions[:2]
    assert ui_text.explanation_caption(r) == escaped(
        f"The model is {ui_text.percent(p0)} sure this is {'an' if n0[0].lower() in 'aeiou' else 'a'} {n0}; "
        f"the highlighted region is what pushed its score for '{n0}' up the most."
    )
    other = explain.explain(model, image, targets=[i1])
    assert ui_text.explanation_caption(other).startswith(escaped(f"The model's top guess is {n0} ({ui_text.percent(p0)}); "
                                                               f"for '{n1}' ({ui_text.percent(p1)})"))
    sal = explain.explain(model, image, method="saliency")
    assert "bright pixels" in ui_text.explanation_caption(sal)


def test_small_helpers() -> None:
    assert ui_text.percent(0.6234) == "62%" and ui_text.percent(0.0712) == "7.1%" and ui_text.percent(0.0002) == "<0.1%"
    assert ui_text.md_escape("a_b *c* [d](e) <f>") == r"a\_b \*c\* \[d\](e) \<f\>"
    assert ui_text.class_label(["x", "tabby"], 1) == "1 · tabby"
    lite = explain.ModelInfo("efficientnet_lite0", "embedded", True, "", 18.0, "")
    tv = explain.ModelInfo("resnet50", "torchvision", False, "resnet50-11ad3fa6.pth", 97.8, "")
    assert widgets.model_label(lite) == "efficientnet_lite0 (embedded)"
    assert widgets.model_label(tv) == "resnet50 (download ~98 MB)"
    assert widgets.model_label(explain.ModelInfo("resnet50", "torchvision", True, "f.pth", 97.8, "")) == "resnet50 (cached)"


def test_grid_default_layers_are_few_distinct_and_in_forward_order(model: explain.Model) -> None:
    chosen = widgets.grid_default_layers(model)
    order = [n for n, _ in model.layers()]
    assert model.default_layer in chosen and 2 <= len(chosen) <= 4
    assert chosen == sorted(chosen, key=order.index)
    grids = {model.layer_info(n).shape[1:] for n in chosen}
    assert len(grids) == len(chosen)  # one layer per resolution


def test_npy_download_round_trips() -> None:
    import io

    import numpy as np

    maps = np.random.default_rng(0).random((2, 7, 7)).astype(np.float32)
    assert np.array_equal(np.load(io.BytesIO(pictures.npy_bytes(maps))), maps)


# ---- guard and configuration -----------------------------------------------------------------------


def _guarded_failure() -> None:
    from ui import page

    with page.guard("testing the guard"):
        raise RuntimeError("boom\nwith a second line")


def _guarded_stop() -> None:
    import streamlit as st

    from ui import page

    with page.guard("testing the guard"):
        st.stop()
    st.write("not reached")


def test_guard_shows_one_line_instead_of_a_traceback() -> None:
    at = AppTest.from_function(_guarded_failure).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Something went wrong while testing the guard: boom. Try another image or setting."
    ]


def test_guard_lets_streamlit_control_flow_through() -> None:
    at = AppTest.from_function(_guarded_stop).run()
    assert not at.exception and not at.error and not at.markdown
    for exc in (StopException(), RerunException(None)):
        with pytest.raises(type(exc)), page.guard("testing"):
            raise exc


def test_streamlit_config() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    # The upload limits (server and widgets) are checked in test_config.py.
    assert config["server"]["enableXsrfProtection"] is True
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["toolbarMode"] == "minimal"
    assert config["client"]["showErrorDetails"] == "none"
    assert config["theme"]["base"] == "light"


def test_overlays_reach_the_browser_pixel_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overlays are sent as PNG: Streamlit's default JPEG smears saliency maps (~17/255 on average)."""
    import io

    import numpy as np
    from PIL import Image
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    sent: list[tuple[str, bytes]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, data, mimetype, kind, filename=None):
        if isinstance(data, bytes) and mimetype.startswith("image/"):
            sent.append((mimetype, data))
        return original(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    at = run_ok(new_app())
    widget(at, "selectbox", state.METHOD).set_value("saliency")
    sent.clear()
    run_ok(at)
    target = widget(at, "selectbox", state.TARGET).value
    m = resources.get_model(DEFAULT)
    r = explain.explain(m, explain.load_image(REPO / "assets" / "samples" / CAT), targets=[target], method="saliency",
                        relative=True)
    # The page's defaults: relative to the top class, drawn on the original picture.
    expected = np.asarray(r.overlays(explain.RELATIVE, on="original")[0].convert("RGB"))
    shown = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for mime, data in sent
             if mime == "image/png" and Image.open(io.BytesIO(data)).size == r.original.size]
    assert any(s.shape == expected.shape and np.array_equal(s, expected) for s in shown)
    assert not [mime for mime, data in sent if Image.open(io.BytesIO(data)).size in (r.image.size, r.original.size)
                and mime != "image/png"]


def _top5_rows(at: AppTest) -> list[dict]:
    """The rows of the sidebar's top-5 chart, as the browser gets them (Vega-Lite spec + Arrow data)."""
    import json

    import pyarrow as pa

    [chart] = at.sidebar.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    assert spec["usermeta"]["embedOptions"]["renderer"] == "svg"  # names stay text, not pixels
    return pa.ipc.open_stream(chart.proto.data.data).read_all().to_pylist()


def test_top5_chart_is_drawn_by_the_browser_from_the_engines_predictions() -> None:
    at = run_ok(new_app())
    widget(at, "selectbox", state.SAMPLE).set_value("coffee.jpg")
    run_ok(at)
    rows = _top5_rows(at)
    want = engine_predictions(DEFAULT, "coffee.jpg")
    assert [(r["rank"], r["index"], r["name"]) for r in rows] == [(k, i, n) for k, (i, n, _p) in enumerate(want, 1)]
    assert [r["p"] for r in rows] == pytest.approx([p for _i, _n, p in want], abs=1e-6)
    assert [r["pct"] for r in rows] == [ui_text.percent(p) for _i, _n, p in want]
    # No picture of a chart any more: the sidebar's only pictures are the gallery's thumbnails.
    assert len(at.sidebar.image) == len(explain.samples.list_samples())


def test_top5_chart_keeps_one_bar_per_class_when_names_repeat() -> None:
    from ui import charts

    spec = charts.top5_spec([(3, "dog", 0.5), (7, "dog", 0.3), (1, "$x$ <b>", 0.2)])
    rows = spec["data"]["values"]
    assert len({r["name"] for r in rows}) == 3 and [r["index"] for r in rows] == [3, 7, 1]
    assert rows[2]["name"] == "$x$ <b>"  # data, shown as text
    assert spec["layer"][0]["encoding"]["color"]["condition"]["test"] == "datum.rank === 1"
