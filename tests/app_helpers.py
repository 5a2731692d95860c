"""Helpers for the dashboard's AppTest tests: a fresh app, widgets by key, expectations from the engine.

Expected values (top classes, layers, error messages) always come from the engine itself, never
hard-coded, so these tests check that the dashboard shows what the engine computes.
"""

from __future__ import annotations

import functools
import io
import pathlib

from corpus import bomb_png, encode
from PIL import Image
from streamlit.testing.v1 import AppTest

import explain
from explain.samples import SAMPLES_DIR
from ui import state
from ui import text as ui_text

REPO = pathlib.Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
TIMEOUT = 120  # s per script run: the first one loads the model on a busy 2-core machine


def new_app() -> AppTest:
    """A fresh session (empty session state) of the dashboard; models stay cached in the process."""
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def run_ok(at: AppTest) -> AppTest:
    """Run and fail with the app's own words if it raised or showed an error."""
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def widget(at: AppTest, kind: str, key: str):
    """The widget of ``kind`` (``"selectbox"``, ``"slider"``, …) with session-state ``key``."""
    return getattr(at, kind)(key=key)


def markdown_text(at: AppTest) -> str:
    """All Markdown and caption text of the page, one string."""
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


def image_captions(at: AppTest) -> list[str]:
    """Captions of every picture in the main area (one entry per picture)."""
    return [c for img in at.main.image for c in img.captions]


def main_images(at: AppTest) -> int:
    """Number of pictures in the main area (the sidebar's chart and gallery excluded)."""
    return sum(len(img.value) for img in at.main.image)


@functools.cache
def sample_bytes(name: str) -> bytes:
    """Bytes of a bundled sample."""
    return (SAMPLES_DIR / name).read_bytes()


@functools.cache
def engine_predictions(model_name: str, sample: str, method: str = "gradcam") -> tuple[tuple[int, str, float], ...]:
    """Top-5 predictions the engine makes for a sample (the app must show these)."""
    from ui import resources

    m = resources.get_model(model_name)
    r = explain.explain(m, explain.load_image(SAMPLES_DIR / sample), method=method)
    return tuple(r.predictions)


def escaped(text: str) -> str:
    """How the app writes ``text`` into Markdown (special characters escaped)."""
    return ui_text.md_escape(text)


def animated_gif() -> bytes:
    """A 3-frame 32×32 animated GIF (red, green, blue)."""
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def bad_uploads() -> dict[str, tuple[str, bytes]]:
    """Broken files a user might upload: name -> (file name, bytes)."""
    cat = sample_bytes("cat.jpg")
    return {
        "empty": ("empty.jpg", b""),
        "truncated_jpeg": ("half.jpg", cat[: len(cat) // 3]),
        "text_as_png": ("page.png", b"<!DOCTYPE html><html><body>Not an image</body></html>\n"),
        "decompression_bomb": ("bomb.png", bomb_png(100_000, 100_000)),
        "one_pixel": ("dot.png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
    }


def select_upload(at: AppTest) -> None:
    """Switch the image source to Upload (takes effect on the next run)."""
    widget(at, "segmented_control", state.IMAGE_SOURCE).set_value("Upload")
