"""Charts drawn on the server as pictures: the top-5 bar chart and the raw map with its colour bar."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import streamlit as st

import explain

from ui.pictures import png
from ui.text import percent


@st.cache_data(max_entries=64, show_spinner=False)
def top5_png(predictions: tuple[tuple[int, str, float], ...]) -> bytes:
    """A horizontal bar chart (PNG) of the top predictions; names are drawn as text by matplotlib."""
    from matplotlib.figure import Figure  # no pyplot: thread-safe under a multi-user server

    names = [_shorten(name, 18) for _, name, _ in predictions][::-1]
    probs = [p for _, _, p in predictions][::-1]
    fig = Figure(figsize=(2.7, 0.36 * len(predictions) + 0.25), dpi=130, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(range(len(probs)), probs, color="#1f5fbf", height=0.65)
    bars[-1].set_color("#c2410c")  # the top-1
    # parse_math=False: class names (a user's own labels too) are text, never mathtext ('$…$').
    ax.set_yticks(range(len(names)), names, fontsize=9.5, parse_math=False)
    # Room on the right of the longest bar for its percentage label.
    ax.set_xlim(0, (max(probs) if probs and max(probs) > 0 else 1.0) * 1.35)
    for y, p in enumerate(probs):
        ax.text(p, y, " " + percent(p), va="center", fontsize=9)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def heatmap_png(raw: np.ndarray, colormap: str) -> bytes:
    """The raw map with its colour bar as PNG bytes (``explain.render.raw_map_image``).

    No matplotlib: the picture takes ~1 ms to compose (the colour bar is drawn once per colormap);
    its PNG is encoded once per distinct picture (:func:`ui.pictures.png`).
    """
    return png(explain.render.raw_map_image(raw, colormap))


def show_top5(predictions: Sequence[tuple[int, str, float]]) -> None:
    """Draw the top-5 chart where the caller is (e.g. the sidebar)."""
    # PNG as it is: on "auto" Streamlit would re-encode the chart as JPEG on every rerun.
    st.image(top5_png(tuple((int(i), str(n), float(p)) for i, n, p in predictions)), width="stretch",
             output_format="PNG")
