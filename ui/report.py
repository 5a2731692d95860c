"""The "Download report" button: one .zip with a PNG of the page's grid and a JSON of everything behind it.

``report.png`` is the grid the page shows (overlays with their captions drawn in, via
``explain.render.grid``); ``report.json`` holds the settings (model, image label and digest,
layer, method(s), classes, display), the top-5 predictions and, when the user computed them on the
Faithfulness page for the same model, image, class and layer, the deletion/insertion AUCs.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence

import streamlit as st
from PIL import Image, ImageDraw, ImageFont

import explain
from explain import render
from ui import state

PNG_NAME, JSON_NAME = "report.png", "report.json"
TILE = 224  # px per grid cell
NOT_APPLICABLE_GREY = (236, 236, 236)


def not_applicable_tile(reason: str, size: int = TILE) -> Image.Image:
    """A grey cell saying why a method does not apply (for the Compare methods grid)."""
    tile = Image.new("RGB", (size, size), NOT_APPLICABLE_GREY)
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    lines, line = [], ""
    for word in ("Not applicable: " + reason).split():
        if len(line) + len(word) + 1 > 34:  # characters per line of the default font in a 224 px cell
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, text in enumerate(lines[:14]):
        draw.text((6, 6 + 14 * i), text, fill="black", font=font)
    return tile


def predictions_json(predictions: Sequence[tuple[int, str, float]]) -> list[dict]:
    """``[{"index": 281, "name": "tabby", "probability": 0.62}, …]``."""
    return [{"index": int(i), "name": str(n), "probability": float(p)} for i, n, p in predictions]


def faithfulness_json(sel: state.Selection) -> dict | None:
    """Deletion/insertion AUCs per method from the Faithfulness page, if computed for this selection."""
    stored = st.session_state.get(state.FAITH_RESULTS)
    if not isinstance(stored, state.FaithfulnessShown):
        return None
    if stored.context != (sel.model_name, sel.image_digest, sel.target, sel.layer):
        return None  # computed for another model, image, class or layer: not about this report
    out = {
        str(method): {
            "class": int(result.cls),
            "deletion_auc": _maybe_float(result.deletion_auc),
            "insertion_auc": _maybe_float(result.insertion_auc),
        }
        for method, result in stored.results.items()
    }
    return out or None


def _maybe_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def settings_json(
    page: str, m: explain.Model, sel: state.Selection, extra: Mapping[str, object] | None = None
) -> dict:
    """Everything behind the picture, as plain JSON-able data."""
    report: dict[str, object] = {
        "app": "CAM Explorer",
        "page": page,
        "model": {"name": m.name, "source": m.source, "num_classes": m.num_classes},
        "image": {"label": sel.image_label, "digest": sel.image_digest, "fit": sel.fit},
        "layer": sel.layer,
        "method": sel.method,
        "target": {"index": sel.target, "name": m.categories[sel.target]},
        "display": {
            "colormap": sel.colormap, "alpha": sel.alpha, "smooth": sel.smooth,
            "normalize": sel.normalize, "contour": sel.contour,
        },
        "predictions": predictions_json(sel.predictions),
    }
    report.update(extra or {})
    faith = faithfulness_json(sel)
    if faith is not None:
        report["faithfulness"] = faith
    return report


def zip_report(settings: Mapping[str, object], tiles: Sequence[Image.Image], captions: Sequence[str],
               columns: int) -> bytes:
    """The report as .zip bytes: ``report.png`` (the grid of ``tiles``) and ``report.json``
    (``settings``, from :func:`settings_json`, and the grid's layout)."""
    sheet = render.grid(list(tiles), list(captions), columns=columns, tile=TILE)
    data = dict(settings)
    data["grid"] = {"columns": max(1, min(columns, len(tiles))), "tiles": len(tiles), "tile": TILE,
                    "captions": list(captions), "size": list(sheet.size)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        # The PNG is compressed already: stored, not deflated again.
        z.writestr(PNG_NAME, render.to_png_bytes(sheet, compress_level=3), compress_type=zipfile.ZIP_STORED)
        z.writestr(JSON_NAME, json.dumps(data, indent=2, ensure_ascii=False))
    return buf.getvalue()


def download_button(
    where: st.delta_generator.DeltaGenerator,
    page: str,
    m: explain.Model,
    sel: state.Selection,
    tiles: Sequence[Image.Image],
    captions: Sequence[str],
    columns: int,
    extra: Mapping[str, object] | None = None,
) -> None:
    """The "Download report" button (a .zip) for the grid shown on ``page``.

    The zip is made when the button is clicked, not on every rerun (it costs as much as the rest
    of the page). What it reads from this session (the faithfulness scores) is read now: the
    click is served outside the script, where there is no session state.
    """
    if not tiles:
        return
    settings = settings_json(page, m, sel, extra)
    tiles, captions = list(tiles), list(captions)

    def data() -> bytes:
        return zip_report(settings, tiles, captions, columns)

    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{m.name}_{page}")[:80]
    where.download_button(
        "Download report (.zip)", data, file_name=f"{stem}_report.zip", mime="application/zip",
        on_click="ignore", help="A PNG of this grid and a JSON of the settings, predictions and faithfulness scores.",
    )
