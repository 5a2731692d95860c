"""The Faithfulness and Learn pages, driven headless through ``streamlit.testing.v1.AppTest``.

Expectations come from the engine (``explain.metrics``, ``explain.sanity``, ``explain.teach``) or
straight from the model's weights, never from hard-coded numbers. Runs are kept small (two
methods, 8 steps per curve) so the file stays quick on a shared 2-core machine.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from app_helpers import escaped, markdown_text, new_app, run_ok, widget
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from torch import nn

import explain
from explain.samples import SAMPLES_DIR
from ui import resources, state

DEFAULT = explain.DEFAULT_MODEL
FAITH = "pages/faithfulness.py"
LEARN = "pages/learn.py"
RESULTS_KEY = "cx.faith.results"  # the contract with the report download, spelled out (ui.state.FAITH_RESULTS)
METHODS_KEY = "cx.faith.methods"
STEPS_KEY = "cx.faith.steps"
CURVES_BUTTON = "Compute deletion & insertion curves"
SANITY_BUTTON = "Run the sanity check"
TEST_METHODS = ["gradcam", "layercam"]
TEST_STEPS = 8
CAM_WEIGHT = "Weight w_k (row of the linear layer)"
GRAD_WEIGHT = "Weight α_k (mean gradient)"


@pytest.fixture(scope="module")
def model() -> explain.Model:
    """The default model, as cached for the app (the very object the pages use)."""
    return resources.get_model(DEFAULT)


@pytest.fixture(scope="module")
def cat():
    return explain.load_image(SAMPLES_DIR / "cat.jpg")


def open_page(page: str) -> object:
    at = new_app()
    at.switch_page(page)
    return run_ok(at)


def buttons(at) -> list[str]:
    """The page's own buttons (the sidebar has the lesson-class buttons on every page)."""
    return [b.label for b in at.main.button]


def click(at, label: str):
    [button] = [b for b in at.button if b.label == label]
    button.click()
    return run_ok(at)


def frame_with(at, column: str):
    """The one dataframe shown with a column called ``column``."""
    [frame] = [d.value for d in at.main.dataframe if column in d.value.columns]
    return frame


def params_digest(m: explain.Model) -> str:
    """SHA-256 over every parameter and buffer of the model, bit for bit."""
    h = hashlib.sha256()
    for name, t in sorted(m.module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- Faithfulness ---------------------------------------------------------------------------------


def test_faithfulness_page_renders_with_buttons_and_no_results_yet(model: explain.Model) -> None:
    at = open_page(FAITH)
    assert buttons(at) == [CURVES_BUTTON, SANITY_BUTTON]
    assert not at.main.dataframe
    text = markdown_text(at)
    assert "Deletion" in text and "Insertion" in text and "Random order" in text
    assert RESULTS_KEY not in at.session_state


def test_curves_table_chart_and_areas_come_from_the_engine(model: explain.Model, cat) -> None:
    at = open_page(FAITH)
    widget(at, "multiselect", METHODS_KEY).set_value(TEST_METHODS)
    widget(at, "select_slider", STEPS_KEY).set_value(TEST_STEPS)
    run_ok(at)
    at = click(at, CURVES_BUTTON)
    target = widget(at, "selectbox", state.TARGET).value
    layer = widget(at, "selectbox", state.LAYER).value

    expected = explain.compare_methods(model, cat, target, TEST_METHODS, layer=layer, steps=TEST_STEPS)
    table = frame_with(at, "Deletion AUC (lower is better)")
    assert list(table["Method"]) == [row.title for row in expected]  # the chosen methods + random
    for shown, row in zip(table.to_dict("records"), expected):
        assert shown["Deletion AUC (lower is better)"] == pytest.approx(row.deletion_auc, abs=1e-6)
        assert shown["Insertion AUC (higher is better)"] == pytest.approx(row.insertion_auc, abs=1e-6)
    assert len(at.main.image) == 1 + len(TEST_METHODS)  # the curves (matplotlib), then each method's map
    gradcam = expected[0].result
    reading = explain.plain_reading("Grad-CAM", model.categories[target], gradcam, 0.1)
    assert escaped(reading) in markdown_text(at)
    assert buttons(at) == [SANITY_BUTTON]  # the curves are there: no button to compute them again

    # The contract with the report download: context and results, under exactly this key.
    stored = at.session_state[RESULTS_KEY]
    digest = resources.digest_of((SAMPLES_DIR / "cat.jpg").read_bytes())
    assert stored.context == (DEFAULT, digest, target, layer)
    assert set(stored.results) == {*TEST_METHODS, "random"}
    assert isinstance(stored.results["gradcam"], explain.FaithfulnessResult)
    assert stored.results["gradcam"].deletion_auc == pytest.approx(expected[0].deletion_auc, abs=1e-6)

    # A display change reruns the page without a single forward pass.
    before = model.stats.forward_passes
    widget(at, "selectbox", state.COLORMAP).set_value("viridis")
    run_ok(at)
    assert model.stats.forward_passes == before
    assert frame_with(at, "Deletion AUC (lower is better)").shape[0] == len(expected)

    # Another class is another context: the button comes back, the old table goes.
    second = min({i for i, _n, _p in explain.explain(model, cat).predictions} - {target})
    widget(at, "selectbox", state.TARGET).set_value(second)
    run_ok(at)
    assert CURVES_BUTTON in buttons(at)
    assert not [d for d in at.main.dataframe if "Deletion AUC (lower is better)" in d.value.columns]


def test_an_interrupted_run_stores_nothing_and_the_next_run_is_complete(model: explain.Model, cat, monkeypatch) -> None:
    """Streamlit stops a script at its next element redraw when the user changes a control; here the
    progress bar's first redraw stops it, as a control change would."""
    real = explain.metrics.compare_methods

    def interrupted(*args, progress=None, **kwargs):
        def stop_at_first_redraw(done: int, total: int) -> None:
            progress(done, total)
            raise StopException()

        return real(*args, progress=stop_at_first_redraw, **kwargs)

    at = open_page(FAITH)
    widget(at, "multiselect", METHODS_KEY).set_value(["gradcam"])
    widget(at, "select_slider", STEPS_KEY).set_value(TEST_STEPS)
    run_ok(at)
    monkeypatch.setattr(explain.metrics, "compare_methods", interrupted)
    at = click(at, CURVES_BUTTON)
    # No half-made curves kept (AppTest's session state has no .get()).
    assert "cx.faith.runs" not in at.session_state or not at.session_state["cx.faith.runs"]
    assert RESULTS_KEY not in at.session_state
    assert not at.main.dataframe

    # The user's request stands: the next run (e.g. after a colour change) computes it in full.
    monkeypatch.setattr(explain.metrics, "compare_methods", real)
    widget(at, "selectbox", state.COLORMAP).set_value("viridis")
    run_ok(at)
    target = widget(at, "selectbox", state.TARGET).value
    layer = widget(at, "selectbox", state.LAYER).value
    expected = real(model, cat, target, ["gradcam"], layer=layer, steps=TEST_STEPS)
    table = frame_with(at, "Deletion AUC (lower is better)")
    assert list(table["Deletion AUC (lower is better)"]) == pytest.approx([r.deletion_auc for r in expected], abs=1e-6)
    assert at.session_state[RESULTS_KEY].results["gradcam"].insertion_auc == pytest.approx(
        expected[0].insertion_auc, abs=1e-6)


def test_sanity_check_shows_the_engines_correlations_and_leaves_the_model_alone(model: explain.Model, cat) -> None:
    at = open_page(FAITH)
    before = params_digest(model)
    at = click(at, SANITY_BUTTON)
    assert params_digest(model) == before  # the cascade worked on copies only

    target = widget(at, "selectbox", state.TARGET).value
    layer = widget(at, "selectbox", state.LAYER).value
    method = widget(at, "selectbox", state.METHOD).value
    expected = explain.cascading_randomisation(model, cat, target, method=method, layer=layer, steps=3)
    table = frame_with(at, "Rank correlation")
    shown = list(table["Rank correlation"])
    assert shown[0] == 1.0 and len(shown) == len(expected.randomised) + 1
    assert shown[1:] == pytest.approx([s.spearman for s in expected.randomised], abs=1e-9)
    verdict = escaped(expected.verdict())
    boxes = [b.value for b in (at.success if expected.passed else at.warning)]
    assert any(verdict in v for v in boxes), boxes
    assert len(at.main.image) == len(expected.randomised) + 1  # original + one map per stage
    assert SANITY_BUTTON not in buttons(at)


# ---- Learn ----------------------------------------------------------------------------------------


def test_learn_page_shows_equations_and_the_models_own_cam_weights(model: explain.Model, cat) -> None:
    at = open_page(LEARN)
    latex = "\n".join(x.value for x in at.latex)
    assert r"\sum_k w_k^c\,A^k" in latex  # CAM
    assert r"\frac{\partial y^c}{\partial A^k_{ij}}" in latex and r"\mathrm{ReLU}" in latex  # Grad-CAM

    target = widget(at, "selectbox", state.TARGET).value
    cam = frame_with(at, CAM_WEIGHT)
    walk = explain.walkthrough(model, cat, target, method="cam", top_channels=len(cam))
    channels = [int(c) for c in cam["Channel k"]]
    assert channels == walk.channel_indices  # the channels that add the most
    fc_row = model.module.classifier.weight[target].detach().cpu()  # read straight from the weights
    assert list(cam[CAM_WEIGHT]) == pytest.approx([float(fc_row[c]) for c in channels], rel=1e-6)

    grad = frame_with(at, GRAD_WEIGHT)
    gwalk = explain.walkthrough(model, cat, target, method="gradcam", top_channels=len(grad))
    assert list(grad[GRAD_WEIGHT]) == pytest.approx([float(v) for v in gwalk.channel_weights], rel=1e-5)
    assert not at.warning  # CAM applies at the default layer


def test_learn_page_on_the_digit_model(monkeypatch) -> None:
    at = new_app()
    at.switch_page(LEARN)
    at.session_state[state.MODEL] = "digits_lenet"
    run_ok(at)
    m = resources.get_model("digits_lenet")
    assert widget(at, "selectbox", state.SAMPLE).value.startswith("digit_")
    target = widget(at, "selectbox", state.TARGET).value
    cam = frame_with(at, CAM_WEIGHT)
    fc_row = m.module.fc.weight[target].detach().cpu()
    assert list(cam[CAM_WEIGHT]) == pytest.approx([float(fc_row[int(c)]) for c in cam["Channel k"]], rel=1e-6)
    assert len(at.latex) >= 3


# ---- a VGG-like head: CAM does not apply ------------------------------------------------------------


class TinyVGG(nn.Module):
    """VGG's shape in miniature: convolutions, a fixed-size pooling, then several linear layers."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


@pytest.fixture()
def tiny_vgg(monkeypatch) -> explain.Model:
    """A VGG-like model offered by the app's model picker (names with Markdown in them on purpose)."""
    torch.manual_seed(0)
    tiny = explain.Model(
        "tiny_vgg", TinyVGG(), [f"<b>class</b> *{i}*" for i in range(6)],
        explain.Preprocess(64, 73, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), device="cpu", source="embedded",
    )
    real_infos, real_get = resources.model_infos, resources.get_model
    base = next(iter(real_infos().values()))
    info = dataclasses.replace(base, name="tiny_vgg", source="embedded", cached=True, weights_file="")
    monkeypatch.setattr(resources, "model_infos", lambda: {**real_infos(), "tiny_vgg": info})
    monkeypatch.setattr(resources, "get_model", lambda name, progress=None: tiny if name == "tiny_vgg" else real_get(name, progress))
    return tiny


def tiny_app(page: str):
    at = new_app()
    at.switch_page(page)
    at.session_state[state.MODEL] = "tiny_vgg"
    return run_ok(at)


def test_learn_page_on_a_vgg_like_model_teaches_grad_cam_only(tiny_vgg: explain.Model) -> None:
    at = tiny_app(LEARN)
    layer = widget(at, "selectbox", state.LAYER).value
    with pytest.raises(explain.MethodNotApplicableError) as why:
        explain.get_method("cam").check(tiny_vgg, layer)
    assert any(escaped(str(why.value)) in w.value for w in at.warning)
    assert not [d for d in at.main.dataframe if CAM_WEIGHT in d.value.columns]
    assert frame_with(at, GRAD_WEIGHT).shape[0] > 0
    # User strings (class names) are escaped, never rendered as Markdown or HTML.
    target = widget(at, "selectbox", state.TARGET).value
    assert escaped(tiny_vgg.categories[target]) in markdown_text(at)


def test_faithfulness_on_a_vgg_like_model_warns_instead_of_failing(tiny_vgg: explain.Model) -> None:
    at = new_app()
    at.switch_page(FAITH)
    at.session_state[state.MODEL] = "tiny_vgg"
    at.session_state[state.METHOD] = "cam"
    at.session_state[METHODS_KEY] = ["cam", "gradcam"]
    at.session_state[STEPS_KEY] = TEST_STEPS
    run_ok(at)
    assert SANITY_BUTTON not in buttons(at)  # the sidebar's CAM cannot be checked here…
    assert any("CAM does not apply" in w.value for w in at.warning)  # …and the page says why
    at = click(at, CURVES_BUTTON)
    assert any(w.value.startswith("CAM is not applicable here") for w in at.warning)
    table = frame_with(at, "Deletion AUC (lower is better)")
    assert list(table["Method"]) == [explain.TITLES["gradcam"], explain.metrics.RANDOM_TITLE]
