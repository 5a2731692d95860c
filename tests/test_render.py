"""Rendering: normalisation, upsampling, colour maps, overlays, regions, figures and grids."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import explain
from explain import render


def _blob(size: int = 64, box: tuple[int, int, int, int] = (40, 10, 55, 22)) -> np.ndarray:
    """A heat map that is 1 inside ``box`` (x0, y0, x1, y1 inclusive), 0.1 elsewhere."""
    heat = np.full((size, size), 0.1, np.float32)
    x0, y0, x1, y1 = box
    heat[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return heat


def _photo(w: int = 80, h: int = 60) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---- normalisation ---------------------------------------------------------------------------
def test_per_map_scales_each_map_to_full_range():
    rng = np.random.default_rng(1)
    maps = np.stack([rng.random((7, 7)) * 5 + 2, rng.random((7, 7)) * 0.01]).astype(np.float32)
    out = render.normalize_maps(maps, "per_map")
    assert out.dtype == np.float32 and out.shape == (2, 7, 7)
    for m, raw in zip(out, maps):
        assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
        # Min–max is affine: the order of pixels is kept.
        assert np.array_equal(np.argsort(m, axis=None), np.argsort(raw, axis=None))


def test_inputs_are_not_changed_in_place():
    maps = torch.rand(2, 5, 5) * 3
    keep = maps.clone()
    render.normalize_maps(maps, "per_map")
    render.heatmaps(maps, (20, 20), "shared", 1.5)
    assert torch.equal(maps, keep)


def test_shared_keeps_ratios_between_maps():
    strong = np.zeros((6, 6), np.float32)
    strong[2, 3] = 4.0
    weak = strong / 2
    out = render.normalize_maps(np.stack([strong, weak]), "shared")
    assert out[0].max() == pytest.approx(1.0)
    assert out[1].max() == pytest.approx(0.5)
    assert (out[1] <= 0.5 + 1e-6).all()
    np.testing.assert_allclose(out[1], out[0] / 2, atol=1e-6)
    # Per-map would have made the weak map look as strong.
    assert render.normalize_maps(np.stack([strong, weak]), "per_map")[1].max() == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["per_map", "shared"])
@pytest.mark.parametrize("value", [0.0, 3.5])
def test_constant_maps_become_zeros_without_nan(mode, value):
    maps = np.full((2, 4, 4), value, np.float32)
    out = render.normalize_maps(maps, mode)
    assert np.isfinite(out).all()
    if mode == "per_map" or value == 0.0:
        assert (out == 0).all()
    heat = render.heatmaps(maps, (16, 16), mode)
    assert heat.shape == (2, 16, 16) and np.isfinite(heat).all()


def test_per_map_with_one_constant_and_one_varying_map():
    maps = np.stack([np.zeros((3, 3)), np.arange(9).reshape(3, 3)]).astype(np.float32)
    out = render.normalize_maps(maps, "per_map")
    assert (out[0] == 0).all() and out[1].max() == pytest.approx(1.0)


def test_clip_percentile_saturates_the_top():
    m = np.zeros((1, 10, 10), np.float32)
    m[0, 0, 0] = 100.0  # one outlier pixel
    m[0, 1:, :] = np.linspace(0, 1, 90, dtype=np.float32).reshape(9, 10)
    plain = render.normalize_maps(m, "per_map")
    clipped = render.normalize_maps(m, "per_map", clip_percentile=90)
    assert plain[0, 5, 5] < 0.01 and clipped[0, 5, 5] > 0.4
    assert clipped.max() == 1.0


def test_unknown_normalisation_is_an_error():
    with pytest.raises(explain.ExplainError, match="per_map"):
        render.normalize_maps(np.zeros((1, 2, 2)), "global")  # type: ignore[arg-type]


# ---- upsample / smooth / heatmaps ------------------------------------------------------------------
def test_upsample_shape_and_values():
    maps = np.stack([np.eye(7), np.ones((7, 7))]).astype(np.float32)
    up = render.upsample(maps, (224, 160))
    assert up.shape == (2, 224, 160) and up.dtype == np.float32
    np.testing.assert_allclose(up[1], 1.0, atol=1e-6)
    # Bilinear, not nearest: intermediate values appear.
    assert ((up[0] > 0.05) & (up[0] < 0.95)).any()
    assert render.upsample(maps, (7, 7)).shape == (2, 7, 7)


def test_smooth_blurs_and_keeps_mass():
    m = np.zeros((1, 41, 41), np.float32)
    m[0, 20, 20] = 1.0
    s = render.smooth(m, 3.0)
    assert s[0, 20, 20] < 0.1 and s[0, 20, 23] > 0
    assert s.sum() == pytest.approx(1.0, rel=1e-3)
    assert render.smooth(m, 0) is m


def test_heatmaps_are_unit_range_at_the_requested_size():
    maps = torch.randn(3, 7, 7)
    h = render.heatmaps(maps, (100, 120), "per_map", 2.0)
    assert h.shape == (3, 100, 120) and h.dtype == np.float32
    assert h.min() >= 0 and h.max() <= 1


# ---- colour and overlay -------------------------------------------------------------------------
def test_colorize_is_rgb_order():
    heat = np.array([[0.0, 1.0]], np.float32)
    rgb = render.colorize(heat, "jet")
    assert rgb.shape == (1, 2, 3) and rgb.dtype == np.uint8
    lo, hi = rgb[0, 0].astype(int), rgb[0, 1].astype(int)
    assert hi[0] > hi[2] + 50  # jet's top is red
    assert lo[2] > lo[0] + 50  # jet's bottom is blue
    gray = render.colorize(np.array([[0.0, 0.5, 1.0]], np.float32), "gray")
    assert gray[0, 0].tolist() == [0, 0, 0] and gray[0, 2].tolist() == [255, 255, 255]
    assert len(set(gray[0, 1].tolist())) == 1


@pytest.mark.parametrize("cmap", [c for c in explain.COLORMAPS if c != render.CV2_JET])
def test_colorize_is_exactly_matplotlibs_colours(cmap):
    """The 256-entry table gives matplotlib's own colours, bin edges and NaN included."""
    heat = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    heat[0, :6] = [0.0, 1.0, 0.5, np.nextafter(np.float32(1), np.float32(0)), 1 / 256, 255 / 256]
    heat[1, 1] = np.nan
    want = (render.mpl_colormap(cmap)(np.clip(heat, 0, 1))[..., :3] * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(render.colorize(heat, cmap), want)


@pytest.mark.parametrize("cmap", explain.COLORMAPS)
def test_every_listed_colormap_works(cmap):
    rgb = render.colorize(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), cmap)
    assert rgb.shape == (4, 4, 3)
    assert not np.array_equal(rgb[0, 0], rgb[-1, -1])


def test_unknown_colormap_is_an_error():
    with pytest.raises(explain.ExplainError, match="colormap.*jet"):
        render.colorize(np.zeros((2, 2)), "rainbowish")
    with pytest.raises(explain.ExplainError):
        render.overlay(_photo(), np.zeros((60, 80), np.float32), colormap="nope")


def test_overlay_alpha_extremes():
    img = _photo()
    heat = np.random.default_rng(2).random((60, 80)).astype(np.float32)
    zero = render.overlay(img, heat, "jet", alpha=0.0)
    assert zero.mode == "RGB" and zero.size == img.size
    assert np.array_equal(np.asarray(zero), np.asarray(img))
    one = render.overlay(img, heat, "viridis", alpha=1.0)
    assert np.array_equal(np.asarray(one), render.colorize(heat, "viridis"))
    half = np.asarray(render.overlay(img, heat, "jet", alpha=0.5)).astype(int)
    expected = (np.asarray(img).astype(float) + render.colorize(heat, "jet")) / 2
    assert np.abs(half - expected).max() <= 1


def test_overlay_resizes_a_small_heatmap_and_rejects_bad_alpha():
    img = _photo(90, 50)
    out = render.overlay(img, np.random.default_rng(3).random((7, 7)).astype(np.float32))
    assert out.size == (90, 50) and out.mode == "RGB"
    with pytest.raises(explain.ExplainError, match="between 0 and 1"):
        render.overlay(img, np.zeros((50, 90), np.float32), alpha=1.5)


def test_overlay_accepts_grey_and_rgba_images():
    heat = np.zeros((60, 80), np.float32)
    for mode in ("L", "RGBA"):
        out = render.overlay(_photo().convert(mode), heat, alpha=0.3)
        assert out.mode == "RGB" and out.size == (80, 60)


@pytest.mark.parametrize("kind", ["contour", "box"])
def test_contour_and_box_change_pixels_only_near_the_region(kind):
    size, box = 64, (40, 10, 55, 22)
    img = Image.new("RGB", (size, size), (90, 90, 90))
    heat = _blob(size, box)
    plain = np.asarray(render.overlay(img, heat, alpha=0.4)).astype(int)
    drawn = np.asarray(render.overlay(img, heat, alpha=0.4, contour=kind == "contour", box=kind == "box")).astype(int)
    changed = np.abs(drawn - plain).sum(axis=2) > 0
    assert changed.any()
    ys, xs = np.nonzero(changed)
    margin = 3
    assert xs.min() >= box[0] - margin and xs.max() <= box[2] + margin
    assert ys.min() >= box[1] - margin and ys.max() <= box[3] + margin
    # The region's edge is drawn, its inside far from the edge is not.
    assert not changed[16, 47]


# ---- regions ----------------------------------------------------------------------------------
def test_region_box_finds_a_planted_blob():
    box = (40, 10, 55, 22)
    assert render.region_box(_blob(64, box)) == box
    mask = render.region_mask(_blob(64, box))
    assert mask.sum() == (55 - 40 + 1) * (22 - 10 + 1)


def test_region_box_prefers_the_largest_blob_and_handles_empty_maps():
    heat = _blob(64, (5, 5, 8, 8))
    heat[30:50, 30:45] = 1.0
    assert render.region_box(heat) == (30, 30, 44, 49)
    assert render.region_box(np.zeros((10, 10), np.float32)) is None
    assert not render.region_mask(np.zeros((10, 10), np.float32)).any()


# ---- figures, grids, PNG -------------------------------------------------------------------------
def test_heatmap_figure_has_a_colorbar_in_raw_units():
    raw = np.arange(49, dtype=np.float32).reshape(7, 7) * 0.5
    fig = render.heatmap_figure(raw, "viridis", title="Grad-CAM, tabby")
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 2  # the map and its colour bar
    image_ax = fig.axes[0]
    assert image_ax.get_title() == "Grad-CAM, tabby"
    im = image_ax.get_images()[0]
    assert im.get_array().shape == (7, 7)
    assert im.get_clim() == pytest.approx((0.0, 24.0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")


def test_grid_size_and_captions():
    tiles = [Image.new("RGB", (30, 20), c) for c in ("red", "green", "blue", "white", "black")]
    sheet = render.grid(tiles, ["a", "b", "c", "d", "e"], columns=2, tile=50)
    assert sheet.size == (2 * 50, 3 * (50 + 22))
    assert sheet.getpixel((10, 10)) == (255, 0, 0)
    assert sheet.getpixel((60, 10)) == (0, 128, 0)
    assert sheet.getpixel((10, 72 + 10)) == (0, 0, 255)
    no_caps = render.grid(tiles[:3], columns=5, tile=40)
    assert no_caps.size == (3 * 40, 40)
    with pytest.raises(explain.ExplainError):
        render.grid([])


@pytest.mark.parametrize("level", [0, 1, 3, 6])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_bytes_round_trip(mode, level):
    """Lossless in every mode and at every level (the fast ones go through OpenCV, in BGR order)."""
    img = _photo().convert(mode)
    data = render.to_png_bytes(img, compress_level=level)
    assert data.startswith(b"\x89PNG")
    back = Image.open(io.BytesIO(data))
    assert back.mode == img.mode
    assert np.array_equal(np.asarray(back), np.asarray(img))


# ---- through an explanation ---------------------------------------------------------------------
def test_explanation_overlays_and_heatmaps(lite0, cat_coffee_img):
    r = explain.explain(lite0, cat_coffee_img, targets=[285, 967])
    per_map = r.heatmaps("per_map")
    shared = r.heatmaps("shared")
    assert per_map.shape == shared.shape == (2, 224, 224)
    # Bilinear upsampling lands between the 7x7 cell centres, so the peak is just under 1.
    assert per_map[0].max() == pytest.approx(1.0, abs=0.01) and per_map[1].max() == pytest.approx(1.0, abs=0.01)
    assert per_map.min() == 0.0
    assert max(shared[0].max(), shared[1].max()) == pytest.approx(1.0, abs=0.01)
    raw = r.maps.numpy()
    weaker = int(raw[0].max() > raw[1].max())
    assert shared[weaker].max() < per_map[weaker].max()
    overlays = r.overlays("per_map", "jet", 0.5, smooth=2.0, contour=True, box=True)
    assert len(overlays) == 2 and all(o.size == r.image.size and o.mode == "RGB" for o in overlays)
    assert not np.array_equal(np.asarray(overlays[0]), np.asarray(overlays[1]))
