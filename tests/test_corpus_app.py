"""The whole bad-input corpus through the dashboard's upload widget, in one session.

One ``AppTest`` session gets every corpus file uploaded one after another (that is also how a real
user keeps working after a bad file): a good file is explained with no error, and the model's
choice of class is the engine's; a bad file shows exactly one error with the loader's own message,
no exception, and the last good picture stays on screen. After the whole corpus a good photo must
still give the engine's predictions. A fast variant does the same with a handful of representative
files; the full run is marked ``slow`` when it is.
"""

from __future__ import annotations

import pathlib

import pytest
from app_helpers import (
    engine_predictions,
    escaped,
    main_images,
    markdown_text,
    new_app,
    run_ok,
    sample_bytes,
    select_upload,
    widget,
)
from corpus import Case, build_cases

import explain
from explain.io import SUPPORTED_EXTENSIONS
from ui import resources, state
from ui import text as ui_text

CASES = build_cases()
# A spread of the kinds: empty, text, SVG, truncated, bomb, too small, and good ones that need care
# (EXIF rotation, CMYK, 16-bit, transparency, animation, misleading extension).
REPRESENTATIVE = [
    "zero_bytes",
    "exif_orientation_6",
    "html_named_png",
    "cmyk_jpeg",
    "truncated_jpeg",
    "animated_gif_3_frames",
    "bomb_100k_x_100k_header",
    "png_16bit_grey_gradient",
    "svg",
    "palette_png_with_transparency",
    "one_by_10000",
    "png_named_jpg",
]
MULTI_FRAME_INFO = "Animated image: using its first frame."


def upload_name(case: Case) -> str:
    """The name the file reaches the app with: its own. The uploader has no type filter (Streamlit
    enforces one before the script runs, where no specific message can be given), so every file
    reaches the loader, and the content, not the name, decides."""
    return case.filename


def _engine_top1(model: explain.Model, case: Case) -> int:
    image = explain.load_image(case.data, name=upload_name(case))
    return explain.explain(model, image).predictions[0][0]


def upload_corpus(cases: list[Case]) -> None:
    """Upload ``cases`` in order into one session, checking each; then a good photo."""
    model = resources.get_model(explain.DEFAULT_MODEL)
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    uploader = widget(at, "file_uploader", state.UPLOAD)
    uploader.set_value(("first photo.jpg", sample_bytes("coffee.jpg"), "image/jpeg"))
    run_ok(at)
    good_name = "first photo.jpg"
    good_target = widget(at, "selectbox", state.TARGET).value
    assert good_target == engine_predictions(explain.DEFAULT_MODEL, "coffee.jpg")[0][0]

    for case in cases:
        name = upload_name(case)
        widget(at, "file_uploader", state.UPLOAD).set_value((name, case.data, "application/octet-stream"))
        at.run()
        where = f"after uploading {case.name} ({name})"
        assert not at.exception, (where, [e.value for e in at.exception])
        errors = [e.value for e in at.error]
        if case.expect == "ok":
            assert not errors, (where, errors)
            assert main_images(at) == 3, where  # model view, raw map, overlay
            target = widget(at, "selectbox", state.TARGET).value
            assert target == _engine_top1(model, case), where
            assert escaped(name) in markdown_text(at), where
            image = explain.load_image(case.data, name=name)
            infos = [i.value for i in at.info]
            if image.info["cam_explorer_frames"] > 1:
                assert MULTI_FRAME_INFO in infos, (where, infos)
            else:
                assert MULTI_FRAME_INFO not in infos, (where, infos)
            good_name, good_target = name, target
        else:
            with pytest.raises(explain.ImageLoadError) as expected:
                explain.load_image(case.data, name=name)
            assert len(errors) == 1, (where, errors)
            assert escaped(str(expected.value)) in errors[0], (where, errors[0])
            assert f"Still showing {escaped(good_name)}" in errors[0], (where, errors[0])
            assert "Traceback" not in errors[0]
            # The last good picture is still explained.
            assert main_images(at) == 3, where
            assert widget(at, "selectbox", state.TARGET).value == good_target, where
            assert escaped(good_name) in markdown_text(at), where

    # The session still works: a good photo gets the engine's predictions.
    widget(at, "file_uploader", state.UPLOAD).set_value(("last.jpg", sample_bytes("flower.jpg"), "image/jpeg"))
    run_ok(at)
    preds = engine_predictions(explain.DEFAULT_MODEL, "flower.jpg")
    index, name, prob = preds[0]
    assert widget(at, "selectbox", state.TARGET).value == index
    text = markdown_text(at)
    assert f"The model is {ui_text.percent(prob)} sure this is" in text and f"'{escaped(name)}'" in text
    assert "last.jpg" in text
    assert main_images(at) == 3


def test_uploader_has_no_type_filter_that_would_fail_before_the_script() -> None:
    """A type filter makes Streamlit raise its generic exception box for other files, on every rerun."""
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    [uploader] = at.get("file_uploader")
    assert list(uploader.proto.type) == []
    # The corpus really contains files a filter would have refused.
    assert any(pathlib.PurePath(c.filename).suffix.lower().lstrip(".") not in SUPPORTED_EXTENSIONS for c in CASES)


def test_representative_corpus_files_in_one_session() -> None:
    by_name = {c.name: c for c in CASES}
    chosen = [by_name[n] for n in REPRESENTATIVE]
    assert {c.expect for c in chosen} == {"ok", "error"}
    upload_corpus(chosen)


@pytest.mark.slow
def test_whole_corpus_in_one_session() -> None:
    upload_corpus(CASES)
