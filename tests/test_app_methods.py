"""Issue 11 in the dashboard: "…rather than" on Explain, "each against the top class" on Compare
classes, the one-line method summary, and method options drawn from their declarations."""

from __future__ import annotations

import pytest
import torch
from app_helpers import engine_predictions, escaped, image_captions, markdown_text, new_app, run_ok, widget

import explain
from explain import methods as M
from ui import resources, state
from ui import text as ui_text

DEFAULT = explain.DEFAULT_MODEL
CAT = "cat.jpg"


@pytest.fixture(scope="module")
def model() -> explain.Model:
    return resources.get_model(DEFAULT)


def test_explain_rather_than_a_runner_up(model: explain.Model) -> None:
    at = run_ok(new_app())
    preds = engine_predictions(DEFAULT, CAT)
    top, runner = preds[0][0], preds[1][0]
    picker = widget(at, "selectbox", state.CONTRAST)
    assert picker.options[1] == f"{ui_text.class_label(model.categories, runner)} · runner-up"  # suggested first
    assert "rather than" not in markdown_text(at)
    plain = [img.value for img in at.main.image]
    picker.set_value(runner)
    run_ok(at)
    assert f"rather than '{escaped(model.categories[runner])}'" in markdown_text(at)
    assert at.query_params.get("rather") == str(runner)
    assert [img.value for img in at.main.image] != plain  # a different map
    # The method's own summary sits under the picker.
    assert escaped(explain.get_method(M.GradCAM.name).summary) in markdown_text(at)
    # A method that cannot contrast disables the picker and explains the plain score.
    widget(at, "selectbox", state.METHOD).set_value(M.ScoreCAM.name)
    widget(at, "selectbox", state.LAYER).set_value(model.layers()[-1][0])
    run_ok(at)
    assert widget(at, "selectbox", state.CONTRAST).disabled
    assert "rather than" not in markdown_text(at)
    assert top == widget(at, "selectbox", state.TARGET).value


def test_rather_than_link_opens_the_contrast(model: explain.Model) -> None:
    runner = engine_predictions(DEFAULT, CAT)[1][0]
    at = new_app()
    at.query_params["rather"] = str(runner)
    run_ok(at)
    assert widget(at, "selectbox", state.CONTRAST).value == runner
    assert f"rather than '{escaped(model.categories[runner])}'" in markdown_text(at)


def test_compare_classes_each_against_the_top_class(model: explain.Model) -> None:
    at = new_app()
    at.switch_page("pages/compare_classes.py")
    run_ok(at)
    preds = engine_predictions(DEFAULT, CAT)
    widget(at, "toggle", state.AGAINST_TOP).set_value(True)
    run_ok(at)
    top = preds[0][0]
    captions = image_captions(at)
    assert len(captions) == len(preds) - 1  # the top class against itself is left out
    cat = explain.load_image(explain.SAMPLES_DIR / CAT)
    for (i, _n, p), caption in zip(preds[1:], captions):
        expected = f"{ui_text.class_label(model.categories, i)} — {ui_text.percent(p)} rather than {model.categories[top]}"
        # A class with no evidence over the top class says so (its map of the difference is all zero).
        r = explain.explain(model, cat, targets=[i], contrast=top)
        if r.empty(0):
            expected += " — no part raises this score"
        assert caption == escaped(expected)


def test_method_options_are_drawn_from_the_declaration_and_used(model: explain.Model, monkeypatch) -> None:
    seen: list[dict] = []
    real = explain.explain

    def spy(*args, **kwargs):
        seen.append(dict(kwargs.get("options") or {}))
        return real(*args, **kwargs)

    monkeypatch.setattr(explain, "explain", spy)
    at = run_ok(new_app())
    ig = explain.get_method(M.IntegratedGradients.name)
    widget(at, "selectbox", state.METHOD).set_value(ig.name)
    run_ok(at)
    [p] = ig.params
    control = widget(at, "slider", state.option_key(ig.name, p.name))
    assert control.value == p.default and control.min == p.low and control.max == p.high
    control.set_value(4)
    run_ok(at)
    assert seen[-1] == {p.name: 4}
    assert escaped(ig.summary) in markdown_text(at)
    # A seed (wide range) is a number box, not a slider.
    widget(at, "selectbox", state.METHOD).set_value(M.SmoothGrad.name)
    run_ok(at)
    assert widget(at, "number_input", state.option_key(M.SmoothGrad.name, "seed")).value == 0
    assert seen[-1] == explain.get_method(M.SmoothGrad.name).options(None)


def test_eigencam_says_it_is_not_class_specific(model: explain.Model) -> None:
    at = run_ok(new_app())
    widget(at, "selectbox", state.METHOD).set_value(M.EigenCAM.name)
    run_ok(at)
    text = markdown_text(at)
    assert "Not class-specific." in text
    assert "the same for every class" in text
    assert torch.is_tensor(explain.explain(model, explain.load_image(explain.SAMPLES_DIR / CAT),
                                           method=M.EigenCAM.name).maps)
