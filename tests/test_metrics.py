"""Deletion / insertion faithfulness curves (explain.metrics).

Mechanics run on the tiny digits model (milliseconds per batch); the claims about real maps
(Grad-CAM beats a random order on the cat) run on the embedded ImageNet model and are marked slow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import explain
from explain import metrics, render
from explain.metrics import FaithfulnessResult, deletion_insertion, plain_reading, random_ranking, ranking_from_heat

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three() -> Image.Image:
    return explain.load_image(SAMPLES / "digit_3.png")


@pytest.fixture(scope="module")
def three_heat(digits, three) -> np.ndarray:
    return explain.explain(digits, three, targets=[3], method="gradcam").heatmaps()[0]


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return explain.load_image(SAMPLES / "cat.jpg")


@pytest.fixture(scope="module")
def cat_gradcam(lite0, cat) -> explain.Explanation:
    return explain.explain(lite0, cat, method="gradcam")


@pytest.fixture(scope="module")
def cat_curves(lite0, cat, cat_gradcam) -> FaithfulnessResult:
    return deletion_insertion(lite0, cat, cat_gradcam.targets[0], cat_gradcam.heatmaps()[0], steps=16)


@pytest.fixture(scope="module")
def cat_random_curves(lite0, cat, cat_gradcam) -> FaithfulnessResult:
    # A random map at Grad-CAM's own 7×7 resolution: the fair yardstick (see random_ranking).
    order = random_ranking((224, 224), seed=0, grid=(7, 7))
    return deletion_insertion(lite0, cat, cat_gradcam.targets[0], None, ranking=order, steps=16)


def _predict(model: explain.Model, picture: Image.Image) -> torch.Tensor:
    return model.predict(model.preprocess.to_tensor(picture))[0]


# ---- pixel orders --------------------------------------------------------------------------------

def test_ranking_orders_pixels_by_decreasing_heat_with_raster_order_ties():
    heat = np.array([[0.1, 0.9, 0.5], [0.5, 0.0, 0.9]])
    order = ranking_from_heat(heat)
    assert order.tolist() == [1, 5, 2, 3, 0, 4]
    assert np.all(np.diff(heat.ravel()[order]) <= 0)


def test_random_ranking_is_a_seeded_permutation():
    a = random_ranking((12, 10), seed=3)
    assert sorted(a.tolist()) == list(range(120))
    assert np.array_equal(a, random_ranking((12, 10), seed=3))
    assert not np.array_equal(a, random_ranking((12, 10), seed=4))


def test_random_ranking_on_a_grid_removes_contiguous_blobs():
    order = random_ranking((64, 64), seed=0, grid=(4, 4))
    assert sorted(order.tolist()) == list(range(64 * 64))
    first = np.zeros(64 * 64, bool)
    first[order[: 64 * 64 // 16]] = True
    first = first.reshape(64, 64)
    # The first sixteenth of a blob order is one compact region: far fewer boundary pixels than
    # a scattered per-pixel order of the same size.
    scattered = np.zeros(64 * 64, bool)
    scattered[random_ranking((64, 64), seed=0)[: 64 * 64 // 16]] = True
    scattered = scattered.reshape(64, 64)

    def boundary(mask: np.ndarray) -> int:
        return int((mask[:, 1:] != mask[:, :-1]).sum() + (mask[1:] != mask[:-1]).sum())

    assert boundary(first) * 4 < boundary(scattered)


@pytest.mark.parametrize("bad", [np.zeros((3, 4, 5)), np.zeros((0, 4)), np.array([[np.nan, 1.0]])])
def test_bad_heatmaps_are_rejected(bad):
    with pytest.raises(explain.ExplainError, match="heatmap"):
        ranking_from_heat(bad)


def test_bad_random_shapes_are_rejected():
    with pytest.raises(explain.ExplainError, match="height, width"):
        random_ranking((0, 5))
    with pytest.raises(explain.ExplainError, match="grid"):
        random_ranking((5, 5), grid=(0, 2))


# ---- curves: mechanics on the digits model -------------------------------------------------------

def test_curves_shape_start_and_auc(digits, three, three_heat):
    res = deletion_insertion(digits, three, 3, three_heat, steps=8, batch_size=5)
    p = explain.explain(digits, three, targets=[3]).prob(3)
    assert res.cls == 3
    assert np.allclose(res.fractions, np.linspace(0, 1, 9))
    assert res.deletion.shape == res.insertion.shape == (9,)
    # Fraction 0 of deletion and fraction 1 of insertion are the untouched picture.
    assert res.deletion[0] == pytest.approx(p, abs=1e-5)
    assert res.insertion[-1] == pytest.approx(p, abs=1e-5)
    assert res.start_prob == pytest.approx(p, abs=1e-5)
    assert res.deletion_auc == pytest.approx(float(np.trapezoid(res.deletion, res.fractions)), rel=1e-12)
    assert res.insertion_auc == pytest.approx(float(np.trapezoid(res.insertion, res.fractions)), rel=1e-12)
    assert np.all((res.deletion >= 0) & (res.deletion <= 1))


def test_baselines_are_pictures_in_pixel_space(digits, three, three_heat):
    view = digits.preprocess.view(three)
    # The digits model inverts its input: "zero" (no ink as the model sees it) is a white picture.
    white = Image.new("RGB", view.size, (255, 255, 255))
    res = deletion_insertion(digits, three, 3, three_heat, steps=4, baseline="zero")
    assert res.deletion[-1] == pytest.approx(float(_predict(digits, white)[3]), abs=1e-6)
    assert res.insertion[0] == pytest.approx(float(_predict(digits, white)[3]), abs=1e-6)

    mean = tuple(int(v) for v in np.rint(np.asarray(view, np.float64).reshape(-1, 3).mean(axis=0)))
    flat = Image.new("RGB", view.size, mean)
    default = deletion_insertion(digits, three, 3, three_heat, steps=4)
    assert default.deletion_baseline == "mean" and default.insertion_baseline == "blur"
    assert default.deletion[-1] == pytest.approx(float(_predict(digits, flat)[3]), abs=1e-6)
    sigma = max(1.0, metrics.BLUR_SIGMA_FRACTION * view.size[0])
    blurred = view.filter(ImageFilter.GaussianBlur(radius=sigma))
    assert default.insertion[0] == pytest.approx(float(_predict(digits, blurred)[3]), abs=1e-6)


def test_steps_replace_exactly_the_top_pixels(digits, three, three_heat):
    """Rebuild one step image by hand: the top quarter of pixels white, the rest untouched."""
    view = digits.preprocess.view(three)
    res = deletion_insertion(digits, three, 3, three_heat, steps=4, mode="deletion", baseline="zero")
    order = ranking_from_heat(three_heat)
    n = round(0.25 * order.size)
    pixels = np.asarray(view).reshape(-1, 3).copy()
    pixels[order[:n]] = 255
    by_hand = Image.fromarray(pixels.reshape(*np.asarray(view).shape))
    assert res.deletion[1] == pytest.approx(float(_predict(digits, by_hand)[3]), abs=1e-5)


def test_one_mode_only(digits, three, three_heat):
    res = deletion_insertion(digits, three, "3", three_heat, steps=4, mode="deletion")
    assert res.insertion is None and res.insertion_auc is None and res.insertion_baseline is None
    assert res.deletion.shape == (5,)
    with pytest.raises(explain.ExplainError, match="insertion"):
        res.prob_after_revealing(0.5)
    ins = deletion_insertion(digits, three, 3, three_heat, steps=4, mode="insertion")
    assert ins.deletion is None and ins.deletion_auc is None
    assert ins.start_prob == pytest.approx(float(ins.insertion[-1]))
    with pytest.raises(explain.ExplainError, match="deletion"):
        ins.prob_after_removing(0.1)


def test_low_resolution_maps_are_upsampled(digits, three):
    r = explain.explain(digits, three, targets=[3])
    raw = r.maps[0].numpy()  # 8×8 for a 32×32 input
    a = deletion_insertion(digits, three, 3, raw, steps=4)
    b = deletion_insertion(digits, three, 3, render.upsample(raw[None], (32, 32))[0], steps=4)
    assert np.array_equal(a.deletion, b.deletion) and np.array_equal(a.insertion, b.insertion)


def test_progress_counts_images_per_batch(digits, three, three_heat):
    calls: list[tuple[int, int]] = []
    deletion_insertion(digits, three, 3, three_heat, steps=8, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    total = 2 * 9
    assert len(calls) == math.ceil(total / 4)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and len(set(dones)) == len(dones)
    assert dones[-1] == total and {t for _, t in calls} == {total}


def test_cancel_stops_between_batches_and_a_rerun_matches(digits, three, three_heat):
    plain = deletion_insertion(digits, three, 3, three_heat, steps=8, batch_size=4)
    batches = [0]

    def cancel() -> bool:
        batches[0] += 1
        return batches[0] > 2  # let two batches run, then cancel

    before = digits.stats.forward_passes
    with pytest.raises(explain.Cancelled):
        deletion_insertion(digits, three, 3, three_heat, steps=8, batch_size=4, cancel=cancel)
    assert digits.stats.forward_passes - before == 2
    again = deletion_insertion(digits, three, 3, three_heat, steps=8, batch_size=4)
    np.testing.assert_array_equal(again.deletion, plain.deletion)
    np.testing.assert_array_equal(again.insertion, plain.insertion)


def test_prob_after_removing_interpolates_the_deletion_curve():
    res = FaithfulnessResult(
        cls=0, fractions=np.linspace(0, 1, 5), deletion=np.array([0.8, 0.4, 0.2, 0.1, 0.0]),
        insertion=None, deletion_auc=None, insertion_auc=None, start_prob=0.8,
    )
    assert res.prob_after_removing(0.0) == pytest.approx(0.8)
    assert res.prob_after_removing(0.25) == pytest.approx(0.4)
    assert res.prob_after_removing(0.125) == pytest.approx(0.6)
    assert res.prob_after_removing(0.1) == pytest.approx(0.8 - 0.4 * 0.4)
    with pytest.raises(explain.ExplainError, match="between 0 and 1"):
        res.prob_after_removing(1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"mode": "both ways"}, "mode"),
        ({"baseline": "noise"}, "baseline"),
        ({"fit": "stretch"}, "fit"),
    ],
)
def test_bad_arguments_give_clear_errors(digits, three, three_heat, kwargs, match):
    with pytest.raises(explain.ExplainError, match=match):
        deletion_insertion(digits, three, 3, three_heat, **kwargs)


def test_bad_inputs_give_clear_errors(digits, three, three_heat):
    with pytest.raises(explain.UnknownClassError):
        deletion_insertion(digits, three, 10, three_heat)
    with pytest.raises(explain.ExplainError, match="PIL image"):
        deletion_insertion(digits, np.zeros((32, 32, 3)), 3, three_heat)  # type: ignore[arg-type]
    with pytest.raises(explain.ExplainError, match="either a heatmap or a ranking"):
        deletion_insertion(digits, three, 3, three_heat, ranking=random_ranking((32, 32)))
    with pytest.raises(explain.ExplainError, match="Give a heatmap"):
        deletion_insertion(digits, three, 3, None)
    with pytest.raises(explain.ExplainError, match="order of all 1024 pixels"):
        deletion_insertion(digits, three, 3, None, ranking=np.zeros(1024, int))


# ---- plain language ------------------------------------------------------------------------------

def _result(start: float, after: float) -> FaithfulnessResult:
    return FaithfulnessResult(
        cls=0, fractions=np.array([0.0, 0.1, 1.0]), deletion=np.array([start, after, 0.0]),
        insertion=None, deletion_auc=None, insertion_auc=None, start_prob=start,
    )


def test_plain_reading_falls_rises_and_stays():
    assert plain_reading("Grad-CAM", "tabby", _result(0.62, 0.09)) == (
        "With Grad-CAM's top 10% of pixels removed, the model's confidence in 'tabby' falls from 62% to 9%."
    )
    assert plain_reading("Score-CAM", "tabby", _result(0.40, 0.55)) == (
        "With Score-CAM's top 10% of pixels removed, the model's confidence in 'tabby' rises from 40% to 55%."
    )
    assert "stays at 50%" in plain_reading("CAM", "tabby", _result(0.501, 0.499))
    assert "falls from 30% to 0.4%" in plain_reading("CAM", "tabby", _result(0.3, 0.004))
    assert plain_reading("Random order", "tabby", _result(0.62, 0.5)).startswith(
        "With 10% of the pixels removed at random,"
    )


def test_plain_reading_of_another_fraction():
    res = FaithfulnessResult(
        cls=0, fractions=np.linspace(0, 1, 5), deletion=np.array([0.8, 0.4, 0.2, 0.1, 0.0]),
        insertion=None, deletion_auc=None, insertion_auc=None, start_prob=0.8,
    )
    assert "top 25% of pixels removed" in plain_reading("Grad-CAM", "x", res, fraction=0.25)
    assert "falls from 80% to 40%" in plain_reading("Grad-CAM", "x", res, fraction=0.25)


# ---- compare_methods -----------------------------------------------------------------------------

def test_compare_methods_reports_inapplicable_methods_and_a_random_row(digits, three):
    calls: list[tuple[int, int]] = []
    rows = metrics.compare_methods(
        digits, three, 3, ["gradcam", "cam"], layer="features.6", steps=4, progress=lambda d, t: calls.append((d, t))
    )
    assert [r.method for r in rows] == ["gradcam", "cam", "random"]
    grad, cam, rnd = rows
    assert grad.error is None and cam.result is None and rnd.error is None
    assert "CAM does not apply" in cam.error
    assert grad.heat.shape == (32, 32) and rnd.heat is None
    # The Grad-CAM row is exactly the curve of the (upsampled raw) Grad-CAM map.
    r = explain.explain(digits, three, targets=[3], layer="features.6", method="gradcam")
    direct = deletion_insertion(digits, three, 3, r.maps[0].numpy(), steps=4)
    np.testing.assert_array_equal(grad.result.deletion, direct.deletion)
    assert grad.deletion_auc == direct.deletion_auc and grad.insertion_auc == direct.insertion_auc
    # The random row is a random map at the target layer's resolution (8×8 here), seeded.
    order = random_ranking((32, 32), seed=0, grid=(8, 8))
    rand = deletion_insertion(digits, three, 3, None, ranking=order, steps=4)
    np.testing.assert_array_equal(rnd.result.insertion, rand.insertion)
    # Progress counts the images of the rows that ran, and ends at the total.
    assert calls[-1][0] == calls[-1][1] == 2 * 2 * 5


def test_compare_methods_rejects_unknown_methods(digits, three):
    with pytest.raises(explain.UnknownMethodError):
        metrics.compare_methods(digits, three, 3, ["gradcam", "magic"], steps=2)
    with pytest.raises(explain.ExplainError, match="list of method names"):
        metrics.compare_methods(digits, three, 3, "gradcam", steps=2)  # type: ignore[arg-type]


def test_compare_methods_can_be_cancelled(digits, three):
    with pytest.raises(explain.Cancelled):
        metrics.compare_methods(digits, three, 3, ["gradcam"], steps=2, cancel=lambda: True)


# ---- real maps on the ImageNet model -------------------------------------------------------------

@pytest.mark.slow
def test_gradcam_deletes_faster_than_a_random_order_on_the_cat(cat_curves, cat_random_curves):
    assert cat_curves.deletion_auc < cat_random_curves.deletion_auc


@pytest.mark.slow
def test_gradcam_inserts_faster_than_a_random_order_on_the_cat(cat_curves, cat_random_curves):
    assert cat_curves.insertion_auc > cat_random_curves.insertion_auc


@pytest.mark.slow
def test_cat_curves_start_at_the_unmasked_probability(cat_curves, cat_gradcam):
    p = cat_gradcam.prob(cat_gradcam.targets[0])
    assert cat_curves.fractions.shape == cat_curves.deletion.shape == cat_curves.insertion.shape == (17,)
    assert cat_curves.deletion[0] == pytest.approx(p, abs=1e-4)
    assert cat_curves.insertion[-1] == pytest.approx(p, abs=1e-4)
    # With everything replaced, the cat is gone: no more than a small share of the start.
    assert cat_curves.deletion[-1] < 0.1 * p
    assert cat_curves.insertion[0] < 0.1 * p
    assert cat_curves.deletion_auc == pytest.approx(float(np.trapezoid(cat_curves.deletion, cat_curves.fractions)))


@pytest.mark.slow
def test_cat_plain_reading_matches_the_curve(cat_curves, cat_gradcam):
    name = cat_gradcam.target_names[0]
    text = plain_reading("Grad-CAM", name, cat_curves, fraction=0.5)
    after = cat_curves.prob_after_removing(0.5)
    assert after == pytest.approx(float(cat_curves.deletion[8]))
    assert f"Grad-CAM's top 50% of pixels removed, the model's confidence in '{name}' falls from" in text
