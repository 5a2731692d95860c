"""The Audit page's helpers: bundled sets, upload limits, the run with progress and cancel, pictures.

Limits on what one session may audit are read from the environment (the app's settings), with the
upload size itself capped by ``server.maxUploadSize`` in ``.streamlit/config.toml``:

* ``CAM_EXPLORER_AUDIT_MAX_PICTURES`` (default 2,000 pictures per audit),
* ``CAM_EXPLORER_AUDIT_MAX_MB`` (default 200 MB of uploaded files, archives counted unpacked).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
import streamlit as st
from PIL import Image

import explain
from ui import state

MAX_PICTURES = int(os.environ.get("CAM_EXPLORER_AUDIT_MAX_PICTURES", "2000"))
MAX_MB = float(os.environ.get("CAM_EXPLORER_AUDIT_MAX_MB", "200"))
BATCH_SIZE = 32
GALLERY_SIZE = 24
THUMB = 112

#: Bundled sets: key -> (title, whether it suits only the digit models).
SETS: dict[str, tuple[str, bool]] = {
    "digits": ("scikit-learn digits (1,797 labelled)", True),
    "shortcut": ("Shortcut demo (360 digits; '3' and '8' carry a corner marker)", True),
    "gallery": ("Sample gallery", False),
}
UPLOAD = "upload"
FILTERS: dict[str, str] = {
    "all": "All",
    "wrong": "Wrong predictions only",
    "unsure": "Least confident first",
    "off": "Most evidence off the object first",
}


@dataclass
class Result:
    """One audit of this session, with what is needed to draw its pictures again."""

    audit: explain.Audit
    context: tuple  # (set id, model, method, layer, target, fit)
    pictures: dict[str, object] = field(default_factory=dict)  # table file name -> PIL image or bytes
    parquet: bytes = b""


class LimitError(Exception):
    """The chosen set is beyond this app's limits (said in words)."""


def is_digit_model(m: explain.Model) -> bool:
    return m.preprocess.in_channels == 1 and m.num_classes == 10


def bundled_items(key: str) -> list:
    """The pictures of a bundled set as audit list entries."""
    if key == "digits":
        return explain.demo.digits_set("all")
    if key == "shortcut":
        return explain.demo.shortcut_set(marker=True)
    if key == "gallery":
        return [str(path) for _title, path in explain.list_samples()]
    raise KeyError(key)


def upload_items(files) -> list:
    """Uploaded files (pictures or zips) as audit list entries, within the limits, or LimitError."""
    total = sum(len(f.getvalue()) for f in files)
    if total > MAX_MB * 2**20:
        raise LimitError(f"The uploaded files add up to {total / 2**20:.0f} MB, more than this app's limit of "
                         f"{MAX_MB:.0f} MB per audit; upload fewer or smaller files.")
    items = [(f.name, f.getvalue()) for f in files]
    return items


def check_count(n: int) -> None:
    if n > MAX_PICTURES:
        raise LimitError(f"The set holds {n:,} pictures, more than this app's limit of {MAX_PICTURES:,} per audit; "
                         "audit a smaller set here, or use the command line (python -m explain audit) for big ones.")


def session_dir() -> str:
    """This session's own scratch folder (made on first use; output of its audits only)."""
    ss = st.session_state
    d = ss.get(state.AUDIT_DIR)
    if not d or not os.path.isdir(d):
        d = tempfile.mkdtemp(prefix="cam-audit-")
        ss[state.AUDIT_DIR] = d
    return d


def out_dir(context: tuple) -> str:
    """A folder per (set, settings) inside the session's folder, so that a cancelled run resumes."""
    key = hashlib.sha256(json.dumps(context, default=str).encode()).hexdigest()[:16]
    return os.path.join(session_dir(), key)


def forget(context: tuple) -> None:
    shutil.rmtree(out_dir(context), ignore_errors=True)


def run(m: explain.Model, items: list, context: tuple, where) -> explain.Audit:
    """The audit with a progress bar (count, rate, time left) and a Cancel button above it."""
    ss = st.session_state
    ss[state.AUDIT_CANCEL] = False
    slot = where.empty()
    slot.button("Cancel", key="cx.audit.cancel_button", icon=":material/stop_circle:",
                on_click=lambda: ss.__setitem__(state.AUDIT_CANCEL, True))
    bar = where.progress(0.0, text="Starting the audit…")
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        # Redrawing the bar is also where Streamlit stops this run when the user clicks Cancel.
        dt = time.perf_counter() - t0
        rate = done / dt if dt > 0 else 0.0
        left = (total - done) / rate if rate > 0 else 0.0
        bar.progress(min(1.0, done / max(total, 1)),
                     text=f"{done:,} of {total:,} pictures · {rate:.0f} per second · {left:.0f} s left")

    _set, _model, method, layer, target, fit = context
    a = explain.audit(m, items, method=method, layer=layer, target=target, batch_size=BATCH_SIZE,
                      out=out_dir(context), progress=progress, cancel=cancel_requested,
                      fit=fit, limits=explain.ZipLimits(max_total_bytes=int(MAX_MB * 2**20)))
    bar.empty()
    slot.empty()
    return a


def cancel_requested() -> bool:
    """The engine's ``cancel()``: True once the user clicked Cancel (asked before each batch)."""
    return bool(st.session_state.get(state.AUDIT_CANCEL))


def parquet_bytes(context: tuple) -> bytes:
    path = os.path.join(out_dir(context), "audit.parquet")
    with open(path, "rb") as f:
        return f.read()


def pictures_of(items: list) -> dict[str, object]:
    """Table file name → the picture (PIL or bytes) for the gallery and 'Open in Explain'."""
    out: dict[str, object] = {}
    for it in items:
        if isinstance(it, str):
            out[os.path.basename(it)] = it
            out[it] = it
        elif isinstance(it, tuple):
            name, data = it[0], it[1]
            if isinstance(data, (bytes, bytearray)) and name.lower().endswith(".zip"):
                try:
                    with zipfile.ZipFile(io.BytesIO(data)) as zf:
                        for info in zf.infolist():
                            if not info.is_dir() and info.file_size <= 64 * 2**20:
                                entry = info.filename
                                out[entry] = ("zip", data, entry)
                                parts = entry.split("/")
                                if len(parts) >= 3:
                                    out["/".join(parts[1:])] = ("zip", data, entry)
                except zipfile.BadZipFile:
                    pass
            else:
                out[str(name)] = data
    return out


def picture(result: Result, file: str) -> Image.Image | None:
    """The original picture of a table row, or None if it cannot be had."""
    src = result.pictures.get(file)
    try:
        if isinstance(src, Image.Image):
            return src.convert("RGB")
        if isinstance(src, tuple):
            with zipfile.ZipFile(io.BytesIO(src[1])) as zf:
                return explain.load_image(zf.read(src[2]), name=file)
        if isinstance(src, (bytes, bytearray)):
            return explain.load_image(bytes(src), name=file)
        if isinstance(src, str):
            return explain.load_image(src)
    except (explain.ImageLoadError, OSError, KeyError, zipfile.BadZipFile):
        return None
    return None


def picture_bytes(result: Result, file: str) -> bytes | None:
    """PNG bytes of a row's picture (what 'Open in Explain' hands the sidebar)."""
    img = picture(result, file)
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def overlay(m: explain.Model, result: Result, row, colormap: str, fit: str) -> Image.Image | None:
    """The row's map over the picture as the model saw it (thumbnail size)."""
    from explain import render

    img = picture(result, str(row["file"]))
    if img is None or int(row["map_index"]) < 0:
        return None
    view = m.preprocess.view(img, fit)
    raw = np.asarray(result.audit.maps[int(row["map_index"])], dtype=np.float32)
    heat = render.heatmaps(raw[None], (view.size[1], view.size[0]))[0]
    return render.overlay(view, heat, colormap, 0.5).resize((THUMB, THUMB), Image.Resampling.BILINEAR)


def class_mean_tiles(result: Result, colormap: str) -> list[tuple[int, Image.Image, int]]:
    """(class, coloured mean map, pictures) for each explained class."""
    from explain import render

    a = result.audit
    counts = a.ok["explained"].value_counts()
    tiles = []
    for cls, mean in a.class_means().items():
        peak = float(mean.max())
        rgb = render.colorize(mean / peak if peak > 0 else mean, colormap)
        tiles.append((cls, Image.fromarray(rgb).resize((THUMB, THUMB), Image.Resampling.NEAREST), int(counts.get(cls, 0))))
    return tiles


def filtered(result: Result, key: str):
    """The ok rows in gallery order for a filter of :data:`FILTERS`."""
    ok = result.audit.ok
    if key == "wrong":
        return ok[ok["correct"] == False]  # noqa: E712 - nullable boolean column
    if key == "unsure":
        return ok.sort_values("confidence", kind="stable")
    if key == "off":
        if ok["box_share"].notna().any():
            return ok.assign(_off=1.0 - ok["box_share"].astype(float)).sort_values("_off", ascending=False, kind="stable")
        return ok.sort_values("border_share", ascending=False, kind="stable")
    return ok


def report_zip(result: Result, colormap: str) -> bytes:
    """A zip: summary.json, shortcuts.json, audit.csv, maps.npy and the class-mean grid (PNG)."""
    a = result.audit
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("summary.json", json.dumps(a.summary, indent=2, default=str))
        zf.writestr("shortcuts.json", json.dumps([f.to_dict() for f in a.shortcuts()], indent=2))
        zf.writestr("audit.csv", a.table.to_csv(index=False))
        zf.writestr("maps.npy", npy(a))
        tiles = class_mean_tiles(result, colormap)
        if tiles:
            grid = Image.new("RGB", (THUMB * len(tiles), THUMB), "white")
            for k, (_c, img, _n) in enumerate(tiles):
                grid.paste(img, (k * THUMB, 0))
            png = io.BytesIO()
            grid.save(png, format="PNG")
            zf.writestr("class_means.png", png.getvalue())
    return buf.getvalue()


def npy(a: explain.Audit) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a.maps, dtype=np.float32))
    return buf.getvalue()


def count(items: list) -> int:
    """How many pictures a list of audit entries holds (zip uploads counted by their entries)."""
    n = 0
    for it in items:
        if isinstance(it, tuple) and isinstance(it[1], (bytes, bytearray)) and str(it[0]).lower().endswith(".zip"):
            try:
                with zipfile.ZipFile(io.BytesIO(it[1])) as zf:
                    n += sum(1 for i in zf.infolist() if not i.is_dir())
            except zipfile.BadZipFile:
                n += 1
        else:
            n += 1
    return n
