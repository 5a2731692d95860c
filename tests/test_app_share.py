"""Shareable links (``ui.share``) and the "Download report" zip (``ui.report``), through AppTest.

Expected values come from the engine (layers, predictions, class names) and from a first session
of the app itself (a round trip), never from hard-coded constants.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile

import numpy as np
import pytest
from app_helpers import (
    engine_predictions,
    escaped,
    main_images,
    new_app,
    run_ok,
    sample_bytes,
    select_upload,
    widget,
)
from PIL import Image
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.runtime.state.query_params_proxy import QueryParamsProxy
from streamlit.testing.v1 import AppTest

import explain
from explain import render
from explain.metrics import FaithfulnessResult
from explain.samples import SAMPLES_DIR
from ui import report, resources, share, state, widgets

DEFAULT = explain.DEFAULT_MODEL
#: The sidebar controls a link sets: (widget kind, session-state key).
SIDEBAR = {
    share.MODEL: ("selectbox", state.MODEL),
    share.SAMPLE: ("selectbox", state.SAMPLE),
    share.FIT: ("radio", state.FIT),
    share.LAYER: ("selectbox", state.LAYER),
    share.METHOD: ("selectbox", state.METHOD),
    share.TARGET: ("selectbox", state.TARGET),
    share.COLORMAP: ("selectbox", state.COLORMAP),
    share.ALPHA: ("slider", state.ALPHA),
    share.SMOOTH: ("slider", state.SMOOTH),
    share.NORMALIZE: ("radio", state.NORMALIZE),
    share.CONTOUR: ("checkbox", state.CONTOUR),
}


@pytest.fixture(scope="module")
def model() -> explain.Model:
    return resources.get_model(DEFAULT)


def with_link(params: dict[str, str], page: str | None = None) -> AppTest:
    """A new session opened from a link with ``params`` (on ``page``)."""
    at = new_app()
    for key, value in params.items():
        at.query_params[key] = value
    if page is not None:
        at.switch_page(page)
    return at


def sidebar_values(at: AppTest) -> dict[str, object]:
    return {name: widget(at, kind, key).value for name, (kind, key) in SIDEBAR.items()}


# ---- reading a link ---------------------------------------------------------------------------------


def test_link_sets_every_sidebar_control(model: explain.Model) -> None:
    layer = widgets.grid_default_layers(model)[0]
    third = engine_predictions(DEFAULT, "coffee.jpg")[2][0]  # not the class the sample would default to
    link = {
        "model": DEFAULT, "sample": "coffee.jpg", "fit": "crop", "layer": layer, "method": "layercam",
        "class": str(third), "colormap": "viridis", "alpha": "0.7", "smooth": "3", "normalize": "shared", "contour": "1",
    }
    at = run_ok(with_link(link))
    assert not at.warning, [w.value for w in at.warning]
    assert sidebar_values(at) == {
        "model": DEFAULT, "sample": "coffee.jpg", "fit": "crop", "layer": layer, "method": "layercam", "class": third,
        "colormap": "viridis", "alpha": 0.7, "smooth": 3, "normalize": "shared", "contour": True,
    }
    h, w = model.layer_info(layer).shape[1:]
    assert main_images(at) == 3
    assert any(f"{h}×{w} at layer {escaped(layer)}" in m.value for m in at.markdown)


def test_link_for_another_model_sets_its_layer_and_class() -> None:
    digits = resources.get_model("digits_lenet")
    layer = digits.layers()[0][0]
    assert layer != digits.default_layer
    at = run_ok(with_link({"model": "digits_lenet", "sample": "cat.jpg", "layer": layer, "class": "7"}))
    assert not at.warning
    assert widget(at, "selectbox", state.MODEL).value == "digits_lenet"
    assert widget(at, "selectbox", state.SAMPLE).value == "cat.jpg"  # not replaced by the model's digit
    assert widget(at, "selectbox", state.LAYER).value == layer
    assert widget(at, "selectbox", state.TARGET).value == 7


def test_round_trip_through_the_link(model: explain.Model) -> None:
    at = run_ok(new_app())
    widget(at, "selectbox", state.SAMPLE).select("flower.jpg")
    run_ok(at)
    preds = engine_predictions(DEFAULT, "flower.jpg")
    widget(at, "selectbox", state.METHOD).select("gradcam++")
    widget(at, "selectbox", state.LAYER).select(widgets.grid_default_layers(model)[0])
    widget(at, "selectbox", state.TARGET).select(preds[1][0])
    widget(at, "selectbox", state.COLORMAP).select("magma")
    widget(at, "slider", state.ALPHA).set_value(0.35)
    widget(at, "slider", state.SMOOTH).set_value(4)
    widget(at, "checkbox", state.CONTOUR).set_value(True)
    run_ok(at)
    first = sidebar_values(at)
    assert first[share.TARGET] == preds[1][0]  # not a default the new session would pick anyway
    link = dict(at.query_params)
    assert link[share.SAMPLE] == "flower.jpg" and link[share.METHOD] == "gradcam++"

    again = run_ok(with_link(link))
    assert not again.warning
    assert sidebar_values(again) == first
    assert dict(again.query_params) == link


def test_round_trip_of_the_compare_pages(model: explain.Model) -> None:
    at = new_app()
    at.switch_page("pages/compare_classes.py")
    run_ok(at)
    picked = widget(at, "multiselect", state.COMPARE_CLASSES)
    picked.unselect(picked.value[1])
    run_ok(at)
    classes = widget(at, "multiselect", state.COMPARE_CLASSES).value
    link = dict(at.query_params)
    assert link[share.CLASSES] == ",".join(map(str, classes))
    again = run_ok(with_link(link, "pages/compare_classes.py"))
    assert widget(again, "multiselect", state.COMPARE_CLASSES).value == classes

    at.switch_page("pages/compare_methods.py")
    run_ok(at)
    layers = [n for n, _ in model.layers()]
    widget(at, "multiselect", state.COMPARE_METHODS).set_value(["gradcam", "xgradcam"])
    widget(at, "multiselect", state.COMPARE_LAYERS).set_value([layers[-3], model.default_layer])
    run_ok(at)
    link = dict(at.query_params)
    assert share.CLASSES not in link  # another page's parameter is dropped
    again = run_ok(with_link(link, "pages/compare_methods.py"))
    assert widget(again, "multiselect", state.COMPARE_METHODS).value == ["gradcam", "xgradcam"]
    assert widget(again, "multiselect", state.COMPARE_LAYERS).value == [layers[-3], model.default_layer]


HOSTILE = {
    "model": "evil<script>",
    "layer": "nope",
    "method": "x",
    "class": "99999",
    "class_negative": "-1",
    "alpha": "nan",
    "smooth": "1e9",
    "sample": "../../etc/passwd",
    "classes": "1,2,abc",
    "contour": "maybe",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_parameter_is_ignored_with_one_warning(case: str) -> None:
    name = case.split("_")[0]
    value = HOSTILE[case]
    defaults = sidebar_values(run_ok(new_app()))
    at = with_link({name: value})
    at.run()
    assert not at.exception and not at.error
    [warning] = [w.value for w in at.warning]
    assert escaped(f"{name}={value!r}") in warning
    assert sidebar_values(at) == defaults
    assert main_images(at) == 3


def test_all_hostile_parameters_at_once_give_one_escaped_warning() -> None:
    at = with_link({k.split("_")[0]: v for k, v in HOSTILE.items()})
    at.run()
    assert not at.exception and not at.error
    [warning] = [w.value for w in at.warning]
    assert "<script>" not in warning and escaped("evil<script>") in warning
    assert widget(at, "selectbox", state.MODEL).value == DEFAULT
    run_ok(at)  # the warning belongs to the link, shown once
    assert not at.warning


def test_an_uploaded_image_is_not_in_the_link() -> None:
    at = run_ok(new_app())
    assert at.query_params[share.SAMPLE] == widgets.DEFAULT_SAMPLE
    select_upload(at)
    run_ok(at)
    widget(at, "file_uploader", state.UPLOAD).set_value(("mine.jpg", sample_bytes("coffee.jpg"), "image/jpeg"))
    run_ok(at)
    assert share.SAMPLE not in at.query_params
    assert at.query_params[share.TARGET] == str(widget(at, "selectbox", state.TARGET).value)


def test_link_is_only_rewritten_when_something_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[object] = []
    original_set, original_update = QueryParamsProxy.__setitem__, QueryParamsProxy.update

    def counting_set(self, key, value):
        writes.append((key, value))
        return original_set(self, key, value)

    def counting_update(self, *args, **kwargs):
        writes.append((args, kwargs))
        return original_update(self, *args, **kwargs)

    monkeypatch.setattr(QueryParamsProxy, "__setitem__", counting_set)
    monkeypatch.setattr(QueryParamsProxy, "update", counting_update)
    at = run_ok(new_app())
    assert writes, "the first run writes the link"
    writes.clear()
    run_ok(at)
    assert writes == []
    widget(at, "selectbox", state.COLORMAP).select("turbo")
    run_ok(at)
    assert len(writes) == 1 and at.query_params[share.COLORMAP] == "turbo"


# ---- the report --------------------------------------------------------------------------------------


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Files handed to download buttons, by file name (the bytes the browser would get).

    A file made on click (a callable) is made here at once, in a thread of its own as the server
    does it: outside the script, where there is no session state to lean on.
    """
    seen: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id
    original_deferred = MediaFileManager.add_deferred

    def record(self, path_or_data, mimetype, kind, filename=None):
        if filename and isinstance(path_or_data, bytes):
            seen[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    def record_deferred(self, data_callable, mimetype, coordinates, file_name=None, **kw):
        out: list = []

        def click() -> None:
            try:
                out.append(data_callable())
            except BaseException as exc:  # noqa: BLE001 - handed to the test below
                out.append(exc)

        worker = threading.Thread(target=click)
        worker.start()
        worker.join()
        if isinstance(out[0], BaseException):
            raise AssertionError(f"the download {file_name} failed when clicked") from out[0]
        seen[file_name] = out[0]
        return original_deferred(self, data_callable, mimetype, coordinates, file_name=file_name, **kw)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    monkeypatch.setattr(MediaFileManager, "add_deferred", record_deferred)
    return seen


def read_report(downloads: dict[str, bytes]) -> tuple[Image.Image, dict]:
    [name] = [n for n in downloads if n.endswith("_report.zip")]
    with zipfile.ZipFile(io.BytesIO(downloads[name])) as z:
        assert sorted(z.namelist()) == [report.JSON_NAME, report.PNG_NAME]
        png = Image.open(io.BytesIO(z.read(report.PNG_NAME)))
        png.load()
        return png, json.loads(z.read(report.JSON_NAME))


def expected_grid_size(tiles: int, columns: int) -> tuple[int, int]:
    blank = [Image.new("RGB", (8, 8))] * tiles
    return render.grid(blank, ["x"] * tiles, columns=columns, tile=report.TILE).size


def assert_no_blank_tiles(png: Image.Image, tiles: int, columns: int) -> None:
    """Every cell of the grid holds a picture: not one flat colour (white paper, a black square)."""
    columns = max(1, min(columns, tiles))
    cell_h = png.size[1] // ((tiles + columns - 1) // columns)
    pixels = np.asarray(png.convert("RGB"), dtype=np.float64)
    for i in range(tiles):
        r, c = divmod(i, columns)
        cell = pixels[r * cell_h : r * cell_h + report.TILE, c * report.TILE : (c + 1) * report.TILE]
        assert cell.std() > 5, f"tile {i} of the report grid is blank"
    # Past the last tile the sheet is white paper.
    if tiles % columns:
        r, c = divmod(tiles, columns)
        assert pixels[r * cell_h : r * cell_h + report.TILE, c * report.TILE :].std() == 0


def check_predictions(data: dict, model_name: str, sample: str) -> None:
    got = [(p["index"], p["name"], p["probability"]) for p in data["predictions"]]
    want = engine_predictions(model_name, sample)
    assert [(i, n) for i, n, _p in got] == [(i, n) for i, n, _p in want]
    assert np.allclose([p for *_x, p in got], [p for *_x, p in want], atol=1e-5)


def test_report_of_compare_classes(downloads: dict[str, bytes], model: explain.Model) -> None:
    at = new_app()
    at.switch_page("pages/compare_classes.py")
    run_ok(at)
    classes = widget(at, "multiselect", state.COMPARE_CLASSES).value
    png, data = read_report(downloads)
    assert png.format == "PNG" and png.size == expected_grid_size(len(classes), 5)
    assert_no_blank_tiles(png, len(classes), 5)
    assert data["model"]["name"] == DEFAULT and data["page"] == "compare_classes"
    assert [c["index"] for c in data["classes"]] == classes
    assert [c["name"] for c in data["classes"]] == [model.categories[c] for c in classes]
    check_predictions(data, DEFAULT, "cat.jpg")
    assert data["image"]["digest"] == resources.digest_of(sample_bytes("cat.jpg"))
    assert data["layer"] == model.default_layer and data["method"] == "gradcam"
    assert "faithfulness" not in data


def test_report_of_explain_includes_matching_faithfulness_scores(downloads: dict[str, bytes], model: explain.Model) -> None:
    at = run_ok(new_app())
    sel_target = widget(at, "selectbox", state.TARGET).value
    digest = resources.digest_of(sample_bytes("cat.jpg"))
    fr = np.linspace(0, 1, 5)
    results = {
        method: FaithfulnessResult(sel_target, fr, fr[::-1].copy(), fr.copy(), 0.1 * k, 0.5 + 0.1 * k, 0.8)
        for k, method in enumerate(("gradcam", "layercam"), start=1)
    }
    at.session_state[state.FAITH_RESULTS] = state.FaithfulnessShown(
        context=(DEFAULT, digest, sel_target, model.default_layer), results=results,
    )
    downloads.clear()
    run_ok(at)
    png, data = read_report(downloads)
    assert png.size == expected_grid_size(3, 3)  # model view, raw map, overlay
    assert_no_blank_tiles(png, 3, 3)
    check_predictions(data, DEFAULT, "cat.jpg")
    assert data["target"] == {"index": sel_target, "name": model.categories[sel_target]}
    assert data["faithfulness"] == {
        m: {"class": r.cls, "deletion_auc": r.deletion_auc, "insertion_auc": r.insertion_auc} for m, r in results.items()
    }
    # Scores computed for another layer are not about this picture.
    at.session_state[state.FAITH_RESULTS] = state.FaithfulnessShown(
        context=(DEFAULT, digest, sel_target, widgets.grid_default_layers(model)[0]), results=results,
    )
    downloads.clear()
    run_ok(at)
    assert "faithfulness" not in read_report(downloads)[1]


@pytest.mark.parametrize("on_original", [True, False])
def test_overlay_download_is_the_overlay_at_the_original_size(downloads: dict[str, bytes], on_original: bool) -> None:
    """Shown on the original, the download is the very picture shown; shown on the model's view, it is
    drawn on the original when clicked."""
    at = new_app()
    at.session_state[state.ON_ORIGINAL] = on_original
    run_ok(at)
    target = widget(at, "selectbox", state.TARGET).value
    [name] = [n for n in downloads if n.endswith("_overlay.png")]
    got = np.asarray(Image.open(io.BytesIO(downloads[name])).convert("RGB"))
    m = resources.get_model(DEFAULT)
    r = explain.explain(m, explain.load_image(SAMPLES_DIR / "cat.jpg"), targets=[target], relative=True)
    want = np.asarray(r.overlays(explain.RELATIVE, on="original")[0].convert("RGB"))
    assert got.shape == want.shape == (*r.original.size[::-1], 3)
    assert np.array_equal(got, want)


def test_report_of_compare_methods(downloads: dict[str, bytes], model: explain.Model) -> None:
    at = new_app()
    at.switch_page("pages/compare_methods.py")
    run_ok(at)
    methods = widget(at, "multiselect", state.COMPARE_METHODS).value
    layers = widget(at, "multiselect", state.COMPARE_LAYERS).value
    png, data = read_report(downloads)
    assert png.size == expected_grid_size(len(methods) * len(layers), len(methods))
    assert_no_blank_tiles(png, len(methods) * len(layers), len(methods))
    assert data["methods"] == methods and data["layers"] == layers
    assert len(data["grid"]["captions"]) == len(methods) * len(layers)
    refused = [c for c in data["grid"]["captions"] if c.endswith("(n/a)")]
    expected_refused = []
    for layer in layers:
        for method in methods:
            try:
                explain.get_method(method).check(model, layer)
            except explain.MethodNotApplicableError:
                expected_refused.append(f"{explain.TITLES[method]} · {layer} (n/a)")
    assert refused == expected_refused
