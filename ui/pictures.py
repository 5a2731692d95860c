"""Every picture a page shows goes through here: exact PNG bytes, fast to encode.

On "auto" Streamlit re-encodes opaque pictures as JPEG, which smears fine detail (saliency maps)
and shifts colours; :func:`show` always sends PNG.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

import explain

if TYPE_CHECKING:
    from PIL import Image

    from ui.state import Selection


#: PNG compression for pictures shown on a page: ~4× faster to encode than the default, ~10% larger.
FAST_PNG = 1


#: Bytes of PNG kept by :func:`png` for pictures seen again (the view on a class change, the tiles
#: of a grid that gained one class): hashing the pixels costs a tenth of encoding them.
PNG_CACHE_BYTES = 48 * 2**20
_png_cache: OrderedDict[tuple, bytes] = OrderedDict()
_png_cache_size = 0
_png_lock = threading.Lock()


def png(image) -> bytes:
    """A page picture as PNG bytes (exact pixels, unlike Streamlit's default JPEG), encoded fast.

    Show it with ``output_format="PNG"``: on "auto" Streamlit re-encodes opaque pictures as JPEG.
    Keyed by the pixels themselves, so a picture that did not change is not encoded again, for any
    session (the same pixels make the same file).
    """
    global _png_cache_size
    key = (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=20).digest())
    with _png_lock:
        data = _png_cache.get(key)
        if data is not None:
            _png_cache.move_to_end(key)
            return data
    data = explain.render.to_png_bytes(image, compress_level=FAST_PNG)
    with _png_lock:
        if key not in _png_cache and len(data) <= PNG_CACHE_BYTES:
            _png_cache[key] = data
            _png_cache_size += len(data)
            while _png_cache_size > PNG_CACHE_BYTES:
                _png_cache_size -= len(_png_cache.popitem(last=False)[1])
    return data


def show(where: "st.delta_generator.DeltaGenerator", image: "Image.Image", caption: str | None = None) -> bytes:
    """Show ``image`` in ``where`` as exact PNG (the one path every page picture takes); returns the bytes."""
    data = png(image)
    where.image(data, caption=caption, width="stretch", output_format="PNG")
    return data


def overlay(view: "Image.Image", heat: np.ndarray, sel: "Selection") -> "Image.Image":
    """A ``[H, W]`` heatmap in [0, 1] laid over ``view`` with the selection's display settings
    (colormap, opacity, smoothing, outline), as on the Explain page."""
    h = np.asarray(heat, dtype=np.float32)
    if sel.smooth > 0:
        h = explain.render.normalize_maps(explain.render.smooth(h[None], sel.smooth), "per_map")[0]
    return explain.render.overlay(view, h, sel.colormap, sel.alpha, contour=sel.contour, mode=sel.overlay_mode,
                                  heat_weight=sel.heat_weight, image_weight=sel.image_weight)


def npy_bytes(maps: np.ndarray) -> bytes:
    """A ``.npy`` file of the raw maps (for the download button)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(maps, dtype=np.float32))
    return buf.getvalue()


def map_image(values: np.ndarray, colormap: str = "viridis", *, lo: float | None = None, hi: float | None = None,
              size: int = 168) -> Image.Image:
    """A small ``[h, w]`` grid of numbers as a colour picture ``size`` pixels wide.

    ``lo``/``hi`` fix the colour scale (so several maps can share one); by default the map's own
    range. Nearest-neighbour enlargement keeps each cell a visible square: on a page that teaches
    how a 7×7 map is made, smoothing would hide the very grid being explained.
    """
    from PIL import Image as _Image

    a = np.asarray(values, dtype=np.float32)
    lo = float(a.min()) if lo is None else float(lo)
    hi = float(a.max()) if hi is None else float(hi)
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    rgb = explain.render.colorize(np.clip(scaled, 0.0, 1.0), colormap)
    h, w = a.shape
    height = max(1, round(size * h / max(w, 1)))
    return _Image.fromarray(rgb).resize((size, height), _Image.Resampling.NEAREST)
