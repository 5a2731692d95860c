"""The bundled sample gallery: every image loads, is credited, and the composite is laid out right."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image

from explain.io import load_image
from explain.samples import SAMPLES_DIR, list_samples, sample_title

SAMPLES = list_samples()
EXPECTED = {"cat.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "china.jpg", "flower.jpg", "cat_and_coffee.jpg"}
README = SAMPLES_DIR / "README.md"


def test_samples_dir_is_in_the_repository() -> None:
    repo = pathlib.Path(__file__).resolve().parent.parent
    assert SAMPLES_DIR == repo / "assets" / "samples"
    assert SAMPLES_DIR.is_dir()


def test_expected_samples_are_listed() -> None:
    names = {path.name for _, path in SAMPLES}
    assert EXPECTED <= names, f"missing: {sorted(EXPECTED - names)}"
    assert "README.md" not in names


def test_listing_is_sorted_and_titled() -> None:
    paths = [path for _, path in SAMPLES]
    assert paths == sorted(paths, key=lambda p: p.name.lower())
    titles = {path.name: title for title, path in SAMPLES}
    assert titles["cat_and_coffee.jpg"] == "Cat and coffee"
    assert titles["cat.jpg"] == "Cat"


@pytest.mark.parametrize(
    ("filename", "title"),
    [("cat_and_coffee.jpg", "Cat and coffee"), ("digit_7.png", "Digit 7"), ("red-panda.webp", "Red panda")],
)
def test_sample_title(filename: str, title: str) -> None:
    assert sample_title(filename) == title


def test_list_samples_picks_up_any_image_file(tmp_path: pathlib.Path) -> None:
    for name in ("digit_3.png", "b.JPG", "notes.txt", "README.md", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    assert [path.name for _, path in list_samples(tmp_path)] == ["b.JPG", "digit_3.png"]
    assert list_samples(tmp_path / "missing") == []


@pytest.mark.parametrize(("title", "path"), SAMPLES, ids=[p.name for _, p in SAMPLES])
def test_sample_loads(title: str, path: pathlib.Path) -> None:
    img = load_image(path)
    assert img.mode == "RGB"
    assert 100 <= min(img.size) and max(img.size) <= 2000
    assert path.stat().st_size < 500_000, "samples are committed: keep them small"


def test_cat_and_coffee_layout() -> None:
    from skimage import data

    img = load_image(SAMPLES_DIR / "cat_and_coffee.jpg")
    assert img.width > img.height
    cat = data.chelsea()  # already 300 px high, so it is pasted unscaled on the left
    left = np.asarray(img)[:, : cat.shape[1]].astype(np.float64)
    assert left.shape == cat.shape
    assert np.abs(left - cat).mean() < 8, "the left part is not the cat photo"
    coffee = Image.fromarray(data.coffee())
    coffee = np.asarray(coffee.resize((img.width - cat.shape[1], img.height), Image.Resampling.LANCZOS))
    right = np.asarray(img)[:, cat.shape[1] :].astype(np.float64)
    assert np.abs(right - coffee).mean() < 8, "the right part is not the coffee photo"


def test_readme_mentions_every_sample() -> None:
    text = README.read_text(encoding="utf-8")
    for _, path in SAMPLES:
        assert f"`{path.name}`" in text, f"{path.name} has no row in {README}"
