"""Model-randomisation sanity check (explain.sanity).

Mechanics run on a small hand-built model whose definition order differs from its call order;
the claims about real maps run on the embedded ImageNet model (a few seconds in all).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import explain
from explain import sanity
from explain.preprocess import Preprocess

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


class _Scale(nn.Module):
    """A learned per-channel scale with no reset_parameters() (like a layer-scale vector)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:, None, None]


class _Toy(nn.Module):
    """Head defined before the body, and an auxiliary head that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.aux = nn.Linear(8, 3)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = _Scale(8)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.scale(self.body(x)))
        return self.head(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def toy() -> explain.Model:
    torch.manual_seed(0)
    pre = Preprocess(input_size=16, resize_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return explain.Model("toy", _Toy(), ["a", "b", "c"], pre, device="cpu")


@pytest.fixture(scope="module")
def toy_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return explain.load_image(SAMPLES / "cat.jpg")


def _snapshot(module: nn.Module) -> dict:
    """Everything about a module a sanity check could conceivably change."""
    return {
        "params": {n: (p.detach().clone(), p.requires_grad, p.grad) for n, p in module.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in module.named_buffers()},
        "hooks": {
            n: tuple(
                tuple(getattr(m, d).items())
                for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
            )
            for n, m in module.named_modules()
        },
        "training": {n: m.training for n, m in module.named_modules()},
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["params"].keys() == after["params"].keys()
    for n, (t, rg, g) in before["params"].items():
        t2, rg2, g2 = after["params"][n]
        assert torch.equal(t, t2), n
        assert rg == rg2 and g is None and g2 is None, n
    assert before["buffers"].keys() == after["buffers"].keys()
    for n, b in before["buffers"].items():
        assert torch.equal(b, after["buffers"][n]), n
    assert before["hooks"] == after["hooks"]
    assert before["training"] == after["training"]


def _edges(model: explain.Model, image: Image.Image, cls: int) -> np.ndarray:
    """A 'method' that ignores the model: the gradient magnitude of the picture itself."""
    grey = np.asarray(model.preprocess.view(image).convert("L"), np.float32)
    return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))


@pytest.fixture(scope="module")
def cat_gradcam_check(lite0, cat):
    """One Grad-CAM sanity check on the cat, with the shared model's state before and after."""
    cls = explain.explain(lite0, cat).targets[0]
    before = _snapshot(lite0.module)
    result = sanity.cascading_randomisation(lite0, cat, cls, method="gradcam", steps=[1, 3], seed=0)
    return result, before, _snapshot(lite0.module), cls


# ---- layer order ---------------------------------------------------------------------------------

def test_layers_come_in_call_order_not_definition_order(toy):
    # "aux" never runs, so it cannot affect any map; "pool" and "" hold no parameters directly.
    assert sanity.parameterised_layers(toy) == ["stem", "body", "scale", "head"]
    assert sanity.top_layers(toy, 1) == ["head"]
    assert sanity.top_layers(toy, 3) == ["head", "scale", "body"]
    assert sanity.top_layers(toy, 0) == []
    assert sanity.layers_above(toy, "body") == ["head", "scale"]
    assert sanity.layers_above(toy, "stem") == ["head", "scale", "body"]
    assert sanity.layers_above(toy, None) == ["head", "scale", "body", "stem"]


def test_bad_layer_counts_are_rejected(toy):
    with pytest.raises(explain.ExplainError, match="only 4 parameterised layers"):
        sanity.top_layers(toy, 5)
    with pytest.raises(explain.ExplainError, match="whole number"):
        sanity.top_layers(toy, -1)
    with pytest.raises(explain.UnknownLayerError):
        sanity.layers_above(toy, "nope")


def test_lite0_cascade_order(lite0):
    names = sanity.parameterised_layers(lite0)
    assert names[-3:] == ["conv_head", "bn2", "classifier"]
    assert sanity.top_layers(lite0, 3) == ["classifier", "bn2", "conv_head"]
    assert sanity.layers_above(lite0, "bn2") == ["classifier"]
    above = sanity.layers_above(lite0, "blocks.5")
    assert above[:3] == ["classifier", "bn2", "conv_head"]
    assert not any(n.startswith(("blocks.5", "blocks.4")) for n in above)
    assert any(n.startswith("blocks.6") for n in above)


# ---- the randomised copy -------------------------------------------------------------------------

def test_randomised_model_redraws_every_parameter_of_the_named_layers(toy, toy_image):
    before = _snapshot(toy.module)
    twin = sanity.randomised_model(toy, ["head", "scale"], seed=1)
    after = _snapshot(toy.module)
    _assert_same(before, after)
    assert twin is not toy and twin.module is not toy.module
    mine, theirs = dict(toy.module.named_parameters()), dict(twin.module.named_parameters())
    # scale.gamma has no reset_parameters(); it is redrawn all the same.
    for n in ("head.weight", "head.bias", "scale.gamma"):
        assert not torch.equal(mine[n], theirs[n]), n
    for n in ("stem.weight", "body.weight", "aux.weight"):
        assert torch.equal(mine[n], theirs[n]), n
    again = sanity.randomised_model(toy, ["head", "scale"], seed=1)
    assert torch.equal(dict(again.module.named_parameters())["scale.gamma"], theirs["scale.gamma"])
    with pytest.raises(explain.ExplainError, match="no module named 'tail'"):
        sanity.randomised_model(toy, ["head", "tail"])


def test_randomised_lite0_predicts_differently_and_the_shared_model_does_not(lite0, cat):
    _, x = lite0.view_and_tensor(cat)
    p0 = lite0.predict(x)[0]
    twin = sanity.randomised_model(lite0, sanity.top_layers(lite0, 1), seed=0)
    p1 = twin.predict(x)[0]
    assert (p1 - p0).abs().max() > 0.5
    assert int(p1.argmax()) != int(p0.argmax())
    assert torch.equal(lite0.predict(x)[0], p0)


# ---- the check: mechanics on the toy -------------------------------------------------------------

def test_toy_cascade_stages_start_above_the_target_layer(toy, toy_image):
    res = sanity.cascading_randomisation(toy, toy_image, 0, method="gradcam", layer="body", steps=3, seed=0)
    assert res.randomised[0].layers == ["head", "scale"]
    assert res.randomised[0].label == "top 2 layers ('head' … 'scale'; everything after 'body')"
    assert res.randomised[-1].layers == ["head", "scale", "body", "stem"]
    assert res.randomised[-1].label == "all 4 layers"
    counts = [len(s.layers) for s in res.randomised]
    assert counts == sorted(set(counts))
    assert res.original.shape == (16, 16) and 0.0 <= res.original.min() and res.original.max() <= 1.0
    for s in res.randomised:
        assert s.heat.shape == (16, 16)
        assert -1.0 <= s.spearman <= 1.0 and s.ssim <= 1.0
    assert len(res.stage_probs) == len(res.randomised)


def test_toy_check_is_deterministic_for_a_seed(toy, toy_image):
    a = sanity.cascading_randomisation(toy, toy_image, 1, layer="body", steps=[2, 4], seed=5)
    b = sanity.cascading_randomisation(toy, toy_image, 1, layer="body", steps=[2, 4], seed=5)
    assert [s.spearman for s in a.randomised] == [s.spearman for s in b.randomised]
    assert all(np.array_equal(x.heat, y.heat) for x, y in zip(a.randomised, b.randomised))


def test_toy_progress_and_cancel(toy, toy_image):
    calls: list[tuple[int, int]] = []
    sanity.cascading_randomisation(toy, toy_image, 0, layer="body", steps=[1, 2, 4], progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(explain.Cancelled):
        sanity.cascading_randomisation(toy, toy_image, 0, layer="body", steps=[1, 2], cancel=lambda: True)


def test_input_pixel_methods_cascade_from_the_output(toy, toy_image):
    res = sanity.cascading_randomisation(toy, toy_image, 0, method="saliency", steps=2)
    assert res.layer is None
    assert [len(s.layers) for s in res.randomised] == [1, 4]


@pytest.mark.parametrize(
    "steps, match",
    [(0, "at least 1"), ([0, 2], "between 1 and 4"), ([5], "between 1 and 4"), (["x"], "number of stages")],
)
def test_bad_stages_are_rejected(toy, toy_image, steps, match):
    with pytest.raises(explain.ExplainError, match=match):
        sanity.cascading_randomisation(toy, toy_image, 0, layer="body", steps=steps)


def test_bad_inputs_are_rejected(toy, toy_image):
    with pytest.raises(explain.UnknownClassError):
        sanity.cascading_randomisation(toy, toy_image, 7, layer="body")
    with pytest.raises(explain.UnknownMethodError):
        sanity.cascading_randomisation(toy, toy_image, 0, method="magic", layer="body")
    with pytest.raises(explain.ExplainError, match="PIL image"):
        sanity.cascading_randomisation(toy, np.zeros((16, 16, 3)), 0)  # type: ignore[arg-type]
    with pytest.raises(explain.ExplainError, match="2-D"):
        sanity.cascading_randomisation(toy, toy_image, 0, layer="body", steps=[1], map_fn=lambda m, i, c: np.zeros(5))


def test_model_independent_map_fails_on_the_toy(toy, toy_image):
    before = _snapshot(toy.module)
    res = sanity.cascading_randomisation(toy, toy_image, 0, layer="body", steps=[1, 4], map_fn=_edges)
    _assert_same(before, _snapshot(toy.module))
    assert res.method == "_edges"
    assert all(s.spearman == pytest.approx(1.0) and s.ssim == pytest.approx(1.0) for s in res.randomised)
    assert not res.passed
    assert "NOT explaining what the model learned" in res.verdict()


# ---- comparisons and verdicts --------------------------------------------------------------------

def test_rank_correlation_and_similarity():
    rng = np.random.default_rng(0)
    a = rng.random((20, 20))
    assert sanity.rank_correlation(a, a) == pytest.approx(1.0)
    assert sanity.rank_correlation(a, a**3 + 5) == pytest.approx(1.0)  # ranks only
    assert sanity.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert abs(sanity.rank_correlation(a, rng.random((20, 20)))) < 0.2
    assert sanity.rank_correlation(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert sanity.rank_correlation(np.zeros((4, 4)), a[:4, :4]) == 0.0
    assert sanity.similarity(a, a * 2 + 1) == pytest.approx(1.0)
    assert sanity.similarity(a, rng.random((20, 20))) < 0.5
    with pytest.raises(explain.ExplainError, match="different"):
        sanity.rank_correlation(a, a[:5])


def test_rank_correlation_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, (30, 30)).astype(float)  # many ties, like ReLU'd maps
    b = a + rng.normal(0, 2, a.shape)
    b[b < 0] = 0
    assert sanity.rank_correlation(a, b) == pytest.approx(float(spearmanr(a.ravel(), b.ravel()).statistic), abs=1e-12)


def _stage(rho: float) -> sanity.RandomisedMap:
    return sanity.RandomisedMap("top 1 layer ('fc')", ["fc"], np.zeros((2, 2)), rho, rho)


def test_verdicts():
    res = sanity.SanityResult("gradcam", "layer4", 0, np.zeros((2, 2)))
    res.randomised = [_stage(0.95), _stage(0.9)]
    assert not res.passed and res.verdict().startswith(
        "The map barely changed when the model's top layers were replaced by random weights"
    )
    res.randomised = [_stage(0.12)]
    assert res.passed
    assert res.verdict() == (
        "The map changed a lot (rank correlation 0.12) when the top layers were randomised: "
        "it depends on what the model learned, as it should."
    )
    res.randomised = [_stage(0.8), _stage(0.2)]
    assert res.passed and "changed a lot (0.20)" in res.verdict()
    assert sanity.SANITY_SPEARMAN_THRESHOLD == res.threshold == 0.7


# ---- real maps on the ImageNet model -------------------------------------------------------------

def test_the_check_never_touches_the_shared_model(cat_gradcam_check):
    _, before, after, _ = cat_gradcam_check
    _assert_same(before, after)


def test_gradcam_passes_on_the_cat(cat_gradcam_check, lite0):
    res, _, _, _cls = cat_gradcam_check
    assert res.layer == lite0.default_layer
    assert [s.layers for s in res.randomised] == [["classifier"], ["classifier", "bn2", "conv_head"]]
    assert min(s.spearman for s in res.randomised) < 0.3
    assert res.passed and "NOT" not in res.verdict()
    # The randomised models no longer know the cat; the trained one does.
    assert res.original_prob > 0.5
    assert all(p < 0.05 for p in res.stage_probs)


def test_an_edge_map_fails_on_the_cat(lite0, cat):
    before = _snapshot(lite0.module)
    res = sanity.cascading_randomisation(lite0, cat, 285, steps=[1], map_fn=_edges)
    _assert_same(before, _snapshot(lite0.module))
    assert res.randomised[0].spearman == pytest.approx(1.0)
    assert not res.passed
    assert "NOT explaining what the model learned" in res.verdict()
