"""Draw ``docs/audit_shortcut.png``: the shortcut demo as the Audit page shows it.

    python scripts/make_audit_figure.py

Top row: the mean Grad-CAM map per class of ``digits_shortcut`` on the demo set (the '3' and '8'
means sit in the bottom-right corner). Middle: '3's and '8's with their maps (on the marker).
Bottom: the same pictures without the marker, and what the model then predicts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import explain  # noqa: E402
from explain import demo, render  # noqa: E402

TILE = 96
COLUMNS = 10


def tile(view: Image.Image, raw: np.ndarray, caption: str) -> Image.Image:
    heat = render.heatmaps(raw[None], (view.size[1], view.size[0]))[0]
    img = render.overlay(view, heat, "jet", 0.5).resize((TILE, TILE), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (TILE, TILE + 16), "white")
    out.paste(img, (0, 0))
    ImageDraw.Draw(out).text((3, TILE + 2), caption, fill="black")
    return out


def main() -> None:
    m = explain.load_model("digits_shortcut")
    marked = demo.shortcut_set(marker=True)
    plain = demo.shortcut_set(marker=False)
    a = explain.audit(m, marked)
    rows = []
    means = a.class_means()
    top = []
    for c in range(10):
        mean = means[c] / max(float(means[c].max()), 1e-12)
        img = Image.fromarray(render.colorize(mean, "jet")).resize((TILE, TILE), Image.Resampling.NEAREST)
        t = Image.new("RGB", (TILE, TILE + 16), "white")
        t.paste(img, (0, 0))
        ImageDraw.Draw(t).text((3, TILE + 2), f"mean of '{c}'", fill="black")
        top.append(t)
    rows.append(top)
    picks = [k for k, (_n, _i, y) in enumerate(marked) if y in demo.SHORTCUT_CLASSES][:COLUMNS]
    mid, bottom = [], []
    for k in picks:
        r = explain.explain(m, marked[k][1])
        mid.append(tile(r.image, r.maps[0].numpy(), f"'{r.targets[0]}' {r.predictions[0][2]:.0%}"))
        r = explain.explain(m, plain[k][1])
        bottom.append(tile(r.image, r.maps[0].numpy(), f"no marker: '{r.targets[0]}'"))
    rows += [mid, bottom]
    sheet = Image.new("RGB", (TILE * COLUMNS, (TILE + 16) * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, t in enumerate(row):
            sheet.paste(t, (x * TILE, y * (TILE + 16)))
    path = ROOT / "docs" / "audit_shortcut.png"
    sheet.save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
