"""Charts: the top-5 bar chart (Vega-Lite, drawn by the browser) and the raw map with its colour bar (a PNG)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

import explain

from ui.pictures import png
from ui.text import percent


TOP_COLOUR, OTHER_COLOUR, TEXT_COLOUR = "#c2410c", "#1f5fbf", "#31333f"
LABEL_PX = 125  # room for a class name left of its bar; longer names end in "…" (the tooltip has them whole)


def top5_spec(predictions: Sequence[tuple[int, str, float]]) -> dict:
    """A Vega-Lite horizontal bar chart of the top predictions, drawn by the browser.

    The data travel inline (five rows of JSON): no picture to make on the server, nothing to
    re-encode on a rerun. Class names are data, never markup. The renderer is SVG, so the names are
    text that a screen reader (and a test) can read.
    """
    rows, seen = [], set()
    for rank, (index, name, p) in enumerate(predictions, start=1):
        label = str(name)
        while label in seen:  # two classes of a user's model may share a name: keep one bar each
            label += "\u200b"
        seen.add(label)
        rows.append({"rank": rank, "index": int(index), "name": label, "p": float(p), "pct": percent(p),
                     "tip": f"{int(index)} · {name}: {percent(p)}"})
    top = max((r["p"] for r in rows), default=0.0)
    y = {"field": "name", "type": "nominal", "sort": None, "title": None,
         "axis": {"labelLimit": LABEL_PX, "ticks": False, "domain": True, "labelFontSize": 13,
                  "labelColor": TEXT_COLOUR, "labelPadding": 4}}
    x = {"field": "p", "type": "quantitative", "axis": None,
         # Room right of the longest bar for its percentage.
         "scale": {"domain": [0, (top if top > 0 else 1.0) * 1.4]}}
    return {
        "height": 26 * max(1, len(rows)),
        "data": {"values": rows},
        "encoding": {"y": y, "x": x, "tooltip": [{"field": "tip", "type": "nominal", "title": None}]},
        "layer": [
            {"mark": {"type": "bar", "cornerRadiusEnd": 2, "height": {"band": 0.7}},
             "encoding": {"color": {"condition": {"test": "datum.rank === 1", "value": TOP_COLOUR},
                                    "value": OTHER_COLOUR}}},
            {"mark": {"type": "text", "align": "left", "baseline": "middle", "dx": 3, "fontSize": 12.5,
                      "color": TEXT_COLOUR},
             "encoding": {"text": {"field": "pct", "type": "nominal"}}},
        ],
        "config": {"view": {"stroke": None}},
        "usermeta": {"embedOptions": {"renderer": "svg", "actions": False}},
    }


def heatmap_png(raw: np.ndarray, colormap: str) -> bytes:
    """The raw map with its colour bar as PNG bytes (``explain.render.raw_map_image``).

    No matplotlib: the picture takes ~1 ms to compose (the colour bar is drawn once per colormap);
    its PNG is encoded once per distinct picture (:func:`ui.pictures.png`).
    """
    return png(explain.render.raw_map_image(raw, colormap))


def show_top5(predictions: Sequence[tuple[int, str, float]]) -> None:
    """Draw the top-5 chart where the caller is (e.g. the sidebar): a chart the browser draws."""
    st.vega_lite_chart(top5_spec(predictions), width="stretch")
