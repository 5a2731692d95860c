"""ui.pictures.png: every page picture as exact PNG, encoded once per distinct picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ui import pictures


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Sizes of the pictures actually encoded, with an empty cache."""
    seen: list[tuple[int, int]] = []
    original = pictures.explain.render.to_png_bytes

    def counting(image, compress_level=6):
        seen.append(image.size)
        return original(image, compress_level=compress_level)

    monkeypatch.setattr(pictures.explain.render, "to_png_bytes", counting)
    monkeypatch.setattr(pictures, "_png_cache", type(pictures._png_cache)())
    monkeypatch.setattr(pictures, "_png_cache_size", 0)
    return seen


def _picture(seed: int, size: tuple[int, int] = (60, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def test_the_same_pixels_are_encoded_once_and_decode_exactly(encodes) -> None:
    a, b = _picture(0), _picture(1)
    first = pictures.png(a)
    again = pictures.png(Image.fromarray(np.asarray(a).copy()))  # another object, the same pixels
    other = pictures.png(b)
    assert again == first and other != first
    assert encodes == [a.size, b.size]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first))), np.asarray(a))
    # One pixel changed is another picture.
    c = np.asarray(a).copy()
    c[0, 0] ^= 1
    pictures.png(Image.fromarray(c))
    assert len(encodes) == 3


def test_the_cache_keeps_to_its_byte_budget(encodes, monkeypatch: pytest.MonkeyPatch) -> None:
    one = len(pictures.png(_picture(10)))
    monkeypatch.setattr(pictures, "PNG_CACHE_BYTES", int(2.5 * one))
    for seed in range(11, 16):
        pictures.png(_picture(seed))
    assert pictures._png_cache_size <= pictures.PNG_CACHE_BYTES
    assert pictures._png_cache_size == sum(len(v) for v in pictures._png_cache.values())
    assert len(pictures._png_cache) == 2
    # The oldest went first: the newest is still there, the first one is encoded again.
    n = len(encodes)
    pictures.png(_picture(15))
    assert len(encodes) == n
    pictures.png(_picture(10))
    assert len(encodes) == n + 1
