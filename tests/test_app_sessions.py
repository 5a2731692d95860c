"""Sessions stay apart: their selections, their uploaded models and their links.

Two ``AppTest`` sessions are made to interleave on purpose: one session's run stops right after
its sidebar has stored its selection, the other session runs (storing its own selection), and only
then does the first draw its page; then the other way round. A selection kept anywhere but in the
session's own state shows up on the wrong page. Expectations come from the engine (its predictions), never hard-coded.
"""

from __future__ import annotations

import io
import threading

import pytest
from app_helpers import escaped, markdown_text, new_app, run_ok, sample_bytes, select_upload, widget
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app_own_model import upload

import explain
from explain import custom
from explain.samples import SAMPLES_DIR
from explain.zoo.lenet import WEIGHTS_PATH
from ui import resources, share, state

DEFAULT = explain.DEFAULT_MODEL


def _run_inside(monkeypatch: pytest.MonkeyPatch, outer: AppTest, inner: AppTest) -> tuple[int, int]:
    """Run ``outer``; right after its sidebar stores its selection, run all of ``inner`` (its sidebar
    stores its own, its page draws), and only then let ``outer``'s page read the selection.

    ``AppTest`` runs may not overlap freely (they share some class-level state), so ``inner`` runs
    to its end while ``outer`` waits at that one point. Returns the threads that ran (outer, inner).
    """
    real_store = state.store
    nested: list[BaseException | None] = []
    idents: list[int | None] = []

    def store(sel):
        real_store(sel)
        if sel is not None and not nested:
            nested.append(None)

            def run_inner() -> None:
                try:
                    inner.run()
                except BaseException as exc:  # noqa: BLE001 - reported below
                    nested[0] = exc

            t = threading.Thread(target=run_inner)
            t.start()
            t.join(timeout=300)
            idents.append(t.ident)

    monkeypatch.setattr(state, "store", store)
    try:
        outer.run()
    finally:
        monkeypatch.setattr(state, "store", real_store)
    assert nested == [None], f"the inner session did not run inside the outer one: {nested}"
    return threading.get_ident(), int(idents[0] or 0)  # AppTest runs a script in the calling thread


def test_two_interleaved_sessions_each_show_their_own_picture_and_class(monkeypatch) -> None:
    m = resources.get_model(DEFAULT)
    cat_img = explain.load_image(SAMPLES_DIR / "cat.jpg")
    coffee_img = explain.load_image(SAMPLES_DIR / "coffee.jpg")
    # Session A: the cat, explained for its third guess with Grad-CAM++; B: the coffee's top guess.
    a, b = run_ok(new_app()), run_ok(new_app())
    cat_third = explain.explain(m, cat_img).predictions[2][0]
    widget(a, "selectbox", state.TARGET).select(cat_third)
    widget(a, "selectbox", state.METHOD).select("gradcam++")
    widget(b, "selectbox", state.SAMPLE).select("coffee.jpg")
    run_ok(b)
    coffee_top = widget(b, "selectbox", state.TARGET).value
    assert coffee_top == explain.explain(m, coffee_img).predictions[0][0] != cat_third
    # Each session in turn is the one whose page draws after the other stored its selection.
    _run_inside(monkeypatch, a, b)
    _run_inside(monkeypatch, b, a)
    for at in (a, b):
        assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
    expect = {
        0: explain.explain(m, cat_img, targets=[cat_third], method="gradcam++"),
        1: explain.explain(m, coffee_img, targets=[coffee_top], method="gradcam"),
    }
    for i, (at, label) in enumerate(((a, "Cat"), (b, "Coffee"))):
        r = expect[i]
        text = markdown_text(at)
        name = m.categories[r.targets[0]]
        assert f"'{escaped(name)}'" in text, (i, name)
        other = m.categories[expect[1 - i].targets[0]]
        assert f"'{escaped(other)}'" not in text, (i, other)
        assert f"{label} · squash" in text, (i, label)
    # (Overlays are not compared here: once the inner run ends, AppTest drops the mock runtime the
    # outer run's pictures would be stored in. tests/test_load.py compares them byte for byte, in a
    # browser, for concurrent sessions.)


def test_a_picture_over_the_size_limit_gets_the_loaders_message() -> None:
    limit = explain.MAX_IMAGE_MB * 2**20
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(png, format="PNG")
    huge = png.getvalue() + b"\0" * (limit + 1 - len(png.getvalue()))
    with pytest.raises(explain.ImageLoadError) as expected:
        explain.load_image(huge, name="huge.png")
    at = run_ok(new_app())
    select_upload(at)
    run_ok(at)
    widget(at, "file_uploader", state.UPLOAD).set_value(("huge.png", huge, "image/png"))
    at.run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert escaped(str(expected.value)) in error and f"{explain.MAX_IMAGE_MB} MB limit" in error
    assert "Still showing Cat" in error
    widget(at, "file_uploader", state.UPLOAD).set_value(("coffee.jpg", sample_bytes("coffee.jpg"), "image/jpeg"))
    run_ok(at)  # the next picture is used


# ---- uploaded models ------------------------------------------------------------------------------


def _labels(prefix: str) -> tuple[str, bytes]:
    return f"{prefix}.txt", "\n".join(f"{prefix} {i}" for i in range(10)).encode()


def _digits_upload(prefix: str) -> AppTest:
    at = upload(new_app(), custom.LENET, (f"{prefix}_digits.safetensors", WEIGHTS_PATH.read_bytes()), _labels(prefix))
    assert not at.error, [e.value for e in at.error]
    return at


def test_two_sessions_each_with_their_own_uploaded_model() -> None:
    a = _digits_upload("alpha")
    b = _digits_upload("beta")
    mine_a, mine_b = a.session_state[state.UPLOADED], b.session_state[state.UPLOADED]
    assert mine_a.name != mine_b.name
    for at, mine, other, prefix, not_prefix in ((a, mine_a, mine_b, "alpha", "beta"), (b, mine_b, mine_a, "beta", "alpha")):
        at.switch_page("pages/explain.py")
        run_ok(at)
        picker = widget(at, "selectbox", state.MODEL)
        assert picker.value == mine.name and mine.label in picker.options and other.label not in picker.options
        assert sum("(uploaded)" in o for o in picker.options) == 1
        top = widget(at, "selectbox", state.TARGET).value
        text = markdown_text(at)
        assert f"'{prefix} {top}'" in text and f"{not_prefix} " not in text
    # And a session without an upload sees neither.
    plain = run_ok(new_app())
    assert not {mine_a.label, mine_b.label} & set(widget(plain, "selectbox", state.MODEL).options)


def test_the_default_model_is_the_default_even_with_a_model_uploaded() -> None:
    """get_model returns the uploaded model for its own name only."""
    at = _digits_upload("alpha")
    [back] = [b for b in at.button if b.label == "Back to the default model"]
    back.click()
    run_ok(at)
    at.switch_page("pages/explain.py")
    run_ok(at)
    m = resources.get_model(DEFAULT)
    assert widget(at, "selectbox", state.MODEL).value == DEFAULT
    assert len(widget(at, "selectbox", state.TARGET).options) == m.num_classes == 1000
    r = explain.explain(m, explain.load_image(SAMPLES_DIR / "cat.jpg"))
    assert f"'{escaped(r.predictions[0][1])}'" in markdown_text(at)


def test_links_never_carry_a_private_models_name_classes_or_layers() -> None:
    at = _digits_upload("alpha")
    mine = at.session_state[state.UPLOADED]
    for page in ("pages/explain.py", "pages/compare_classes.py", "pages/compare_methods.py"):
        at.switch_page(page)
        run_ok(at)
        assert widget(at, "selectbox", state.MODEL).value == mine.name
        params = at.query_params
        leaked = {share.MODEL, share.LAYER, share.TARGET, share.CLASSES, share.LAYERS} & set(params)
        assert not leaked, (page, {k: params[k] for k in leaked})
        assert not any("alpha" in str(v) or "uploaded" in str(v) for v in params.values()), (page, dict(params))
    # The same pages with the shared default model do write them (the check above can fail).
    plain = run_ok(new_app())
    plain.switch_page("pages/compare_classes.py")
    run_ok(plain)
    assert {share.MODEL, share.LAYER, share.TARGET, share.CLASSES} <= set(plain.query_params)


def test_a_link_naming_an_uploaded_model_is_ignored_with_a_warning() -> None:
    owner = _digits_upload("alpha")
    name = owner.session_state[state.UPLOADED].name
    at = new_app()
    at.query_params[share.MODEL] = name
    run_ok(at)
    [warning] = [w.value for w in at.warning]
    assert "model=" in warning and "no such model" in warning
    assert widget(at, "selectbox", state.MODEL).value == DEFAULT
