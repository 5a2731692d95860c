"""The raw-map picture the dashboard shows (``explain.render.raw_map_image``): exact cells, a colour
bar whose ends are the map's own extremes, and labels in the map's units."""

from __future__ import annotations

import numpy as np
import pytest

from explain import render


def test_cells_are_the_colormap_of_the_min_max_scaled_map() -> None:
    raw = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    img = np.asarray(render.raw_map_image(raw, "viridis", size=100))
    expected = render.colorize((raw - raw.min()) / (raw.max() - raw.min()), "viridis")
    # Nearest-neighbour: the centre of each 50-px cell is exactly that cell's colour.
    for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert tuple(img[25 + 50 * i, 25 + 50 * j]) == tuple(expected[i, j])


def test_colour_bar_runs_from_the_maximum_at_the_top_to_the_minimum() -> None:
    raw = np.linspace(-1, 3, 49, dtype=np.float32).reshape(7, 7)
    img = np.asarray(render.raw_map_image(raw, "jet", size=140))
    x = 140 + render._GAP + render._BAR_WIDTH // 2
    assert tuple(img[0, x]) == tuple(render.colorize(np.array([[1.0]]), "jet")[0, 0])
    assert tuple(img[-1, x]) == tuple(render.colorize(np.array([[0.0]]), "jet")[0, 0])


def test_labels_are_drawn_and_depend_on_the_values() -> None:
    a = np.asarray(render.raw_map_image(np.array([[0.0, 1.0]]), "gray", size=64))
    b = np.asarray(render.raw_map_image(np.array([[0.0, 1000.0]]), "gray", size=64))
    labels = slice(64 + render._GAP + render._BAR_WIDTH + 2, None)
    assert (a[:, labels] < 128).any(), "no tick label was drawn"
    assert not np.array_equal(a[:, labels], b[:, labels])  # other values, other labels


def test_a_flat_map_and_a_non_square_map() -> None:
    flat = np.asarray(render.raw_map_image(np.zeros((3, 3)), "jet", size=30))
    assert flat.shape[0] == 30
    wide = render.raw_map_image(np.random.default_rng(0).random((4, 8)), "jet", size=80)
    assert wide.size[1] == 40  # aspect kept: 8 wide, 4 high


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="raw map"):
        render.raw_map_image(np.zeros((2, 2, 2, 2)), "jet")
