"""The audit: explain a whole set of pictures, batched and resumable, and look for shortcuts.

    a = explain.audit(model, "digits/", method="gradcam", out="audit_out/")
    a.table            # one row per picture (failed ones too, with the reason)
    a.maps             # [n, h, w] raw maps of the ok rows, in table order
    a.class_means()    # {class: [H, W] mean map}
    a.shortcuts()      # findings in plain sentences
    a.summary          # counts, accuracy, speed, settings

Batched for real: ONE forward pass per batch (an uncached :meth:`Model.capture_batch` through the
model's inert taps: no hooks, nothing mutated) and ONE backward pass per batch through the head
only, with each picture's own class as its one-hot ``grad_outputs`` (pictures are independent in
eval mode). Channel weights come from the very method classes ``explain()`` uses, fed one picture
at a time from the batch, so the maps equal ``explain()``'s. Methods that need more forward passes
per picture (Score-CAM) do them per picture, as ``explain()`` does.

Resumable: with ``out=DIR`` every batch is written to ``DIR/.parts`` as soon as it is done and
merged into ``DIR/audit.parquet``, ``DIR/maps.npy``, ``DIR/summary.json`` and
``DIR/shortcuts.json`` at the end (also of a cancelled run). A row's key is the picture's file
name, its content hash and the settings (model weights, layer, method, target, fit), so a second
run with the same settings does only the pictures not done yet.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
import pickle
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ExplainError, ImageLoadError, UnknownClassError
from .explanation import explain as explain_one
from .io import load_image
from .methods import DEFAULT_METHOD, get_method
from .progress import CancelCheck, Progress
from .model import Model
from .sources import AuditError, Item, Reader, ZipLimits, collect, looks_like_archive

Target = Literal["predicted", "label"]

#: Corner squares are this fraction of the side (a corner is 1/9 of the picture); the border band
#: and the edge strips are this thick.
CORNER_FRACTION = 1 / 3
BAND_FRACTION = 0.125
#: A class is flagged when, in at least this fraction of its pictures, the map's PEAK lies in the
#: same border region ...
CONSISTENT_FRACTION = 0.7
#: ... and the median share of the evidence there is at least this (a corner holds 11% of a
#: uniform map, an edge strip 12.5%); "outside the boxes" is judged against :data:`OFF_OBJECT_SHARE`.
CORNER_SHARE = 0.25
EDGE_SHARE = 0.5
OFF_OBJECT_SHARE = 0.6
#: Classes with fewer pictures than this are never flagged (too few to call it a habit).
MIN_PICTURES = 5

REGIONS: tuple[str, ...] = (
    "top-left corner", "top-right corner", "bottom-left corner", "bottom-right corner",
    "top edge", "bottom edge", "left edge", "right edge",
)
_SHARE_COLUMNS = {r: "share_" + r.replace(" corner", "").replace(" edge", "_edge").replace("-", "_") for r in REGIONS}

TABLE_FILE, MAPS_FILE, SUMMARY_FILE, SHORTCUTS_FILE, PARTS_DIR = (
    "audit.parquet", "maps.npy", "summary.json", "shortcuts.json", ".parts",
)
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Finding:
    """One suspected shortcut: class ``cls`` keeps looking at ``name`` (``box`` in model-view pixels)."""

    cls: int
    class_name: str
    name: str
    box: tuple[int, int, int, int] | None
    share: float  # median share of the evidence in the region over the class's pictures
    consistency: float  # fraction of the class's pictures whose map peaks in the region
    pictures: int
    message: str

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        d = asdict(self)
        d["box"] = list(self.box) if self.box is not None else None
        return d


class Audit:
    """The outcome of :func:`audit`: the table, the maps, and what they add up to."""

    def __init__(self, table: pd.DataFrame, maps: np.ndarray, summary: dict, categories: Sequence[str], view_size: int) -> None:
        self.table = table
        self.maps = maps
        self.summary = summary
        self.categories = list(categories)
        self.view_size = int(view_size)

    @property
    def ok(self) -> pd.DataFrame:
        """The rows of the pictures that were explained (``map_index`` points into :attr:`maps`)."""
        return self.table[self.table["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        """The rows of the pictures that could not be used, with ``error`` saying why."""
        return self.table[self.table["status"] != "ok"]

    def map_of(self, row: int) -> np.ndarray:
        """The raw map of table row ``row`` (a failed row has none: an error)."""
        index = int(self.table["map_index"].iloc[row])
        if index < 0:
            raise AuditError(f"Row {row} ({self.table['file'].iloc[row]}) has no map: {self.table['error'].iloc[row]}")
        return np.asarray(self.maps[index])

    def class_means(self, size: int | None = None) -> dict[int, np.ndarray]:
        """``{class: [H, W]}``: the mean map over the pictures explained as that class.

        Each map is scaled to its own maximum first, so every picture counts the same; the mean is
        upsampled to the model view (``size`` pixels, default the model's input size).
        """
        ok = self.ok
        size = int(size or self.view_size)
        out: dict[int, np.ndarray] = {}
        for cls, rows in ok.groupby("explained", sort=True):
            idx = rows["map_index"].to_numpy(dtype=np.int64)
            m = np.asarray(self.maps[np.sort(idx)], dtype=np.float32)
            peak = m.reshape(len(m), -1).max(axis=1)
            m = m[peak > 0] / peak[peak > 0, None, None]
            mean = m.mean(axis=0) if len(m) else np.zeros(self.maps.shape[1:], np.float32)
            t = torch.from_numpy(np.ascontiguousarray(mean))[None, None]
            out[int(cls)] = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        return out

    def shortcuts(self) -> list[Finding]:
        """Classes whose evidence keeps landing in one small border region (or off the boxes)."""
        return find_shortcuts(self.ok, self.categories, self.view_size)

    def confusion(self) -> pd.DataFrame:
        """Counts of (true label × prediction) over the labelled pictures (empty if none)."""
        ok = self.ok.dropna(subset=["label"])
        if ok.empty:
            return pd.DataFrame()
        classes = sorted(set(ok["label"].astype(int)) | set(ok["prediction"].astype(int)))
        names = [self.categories[c] for c in classes]
        cm = pd.crosstab(ok["label"].astype(int), ok["prediction"].astype(int)).reindex(index=classes, columns=classes, fill_value=0)
        cm.index, cm.columns = names, names
        cm.index.name, cm.columns.name = "label", "prediction"
        return cm

    def __repr__(self) -> str:
        s = self.summary
        return f"Audit({s.get('pictures')} pictures, {s.get('ok')} ok, {s.get('failed')} failed, accuracy {s.get('accuracy')})"


def find_shortcuts(ok: pd.DataFrame, categories: Sequence[str], view_size: int) -> list[Finding]:
    """The shortcut finder on the ok rows of an audit table.

    Per explained class: for each border region (four corners, four edge strips), the fraction of
    pictures whose map peaks there (*consistency*) and the median share of the evidence there. A
    region is flagged when the evidence keeps landing there, picture after picture
    (:data:`CONSISTENT_FRACTION`), and holds far more than its area's share (:data:`CORNER_SHARE`,
    :data:`EDGE_SHARE`); with boxes, likewise for the evidence outside the object. One finding per
    class: the most consistent region.
    """
    findings: list[Finding] = []
    boxes = region_boxes(view_size)
    area = {r: ((b[2] - b[0] + 1) * (b[3] - b[1] + 1)) / view_size**2 for r, b in boxes.items()}
    word = _object_word(categories)
    for cls, rows in ok.groupby("explained", sort=True):
        rows = rows.dropna(subset=["peak_x", "peak_y"])
        n = len(rows)
        if n < MIN_PICTURES:
            continue
        name = categories[int(cls)] if 0 <= int(cls) < len(categories) else str(cls)
        px, py = rows["peak_x"].astype(int).to_numpy(), rows["peak_y"].astype(int).to_numpy()
        best: Finding | None = None
        for region in REGIONS:
            x0, y0, x1, y1 = boxes[region]
            consistency = float(((px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)).mean())
            share = float(rows[_SHARE_COLUMNS[region]].astype(float).median())
            need = CORNER_SHARE if region.endswith("corner") else EDGE_SHARE
            if consistency >= CONSISTENT_FRACTION and share >= need and (best is None or consistency > best.consistency):
                msg = (f"For '{name}', {share:.0%} of the evidence lies in the {region} (which is {area[region]:.0%} of the "
                       f"picture), and the map peaks there in {consistency:.0%} of the pictures: the model may be using "
                       f"a marker there rather than the {word}.")
                best = Finding(int(cls), name, region, boxes[region], share, consistency, n, msg)
        boxed = rows[rows["box_share"].notna()] if "box_share" in rows else rows.iloc[:0]
        if len(boxed) >= MIN_PICTURES:
            outside = 1.0 - boxed["box_share"].astype(float)
            consistency = float((~boxed["box_hit"].fillna(False).astype(bool)).mean())
            share = float(outside.median())
            if consistency >= CONSISTENT_FRACTION and share >= OFF_OBJECT_SHARE and (best is None or consistency > best.consistency):
                msg = (f"For '{name}', {share:.0%} of the evidence lies outside the object's box, and the map peaks "
                       f"outside it in {consistency:.0%} of the pictures: the model may be using the background or "
                       "context rather than the object.")
                best = Finding(int(cls), name, "outside the boxes", None, share, consistency, len(boxed), msg)
        if best is not None:
            findings.append(best)
    return findings


def _object_word(categories: Sequence[str]) -> str:
    return "digit" if list(categories) == [str(i) for i in range(10)] else "object"


def region_boxes(size: int) -> dict[str, tuple[int, int, int, int]]:
    """(x0, y0, x1, y1), inclusive, of each named border region of a ``size``-pixel model view."""
    c = max(1, round(CORNER_FRACTION * size))
    b = max(1, round(BAND_FRACTION * size))
    e = size - 1
    return {
        "top-left corner": (0, 0, c - 1, c - 1),
        "top-right corner": (size - c, 0, e, c - 1),
        "bottom-left corner": (0, size - c, c - 1, e),
        "bottom-right corner": (size - c, size - c, e, e),
        "top edge": (0, 0, e, b - 1),
        "bottom edge": (0, size - b, e, e),
        "left edge": (0, 0, b - 1, e),
        "right edge": (size - b, 0, e, e),
    }


def _region_masks(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, S, S]`` masks of :data:`REGIONS` and the ``[S, S]`` border band."""
    masks = torch.zeros(len(REGIONS), size, size)
    for k, r in enumerate(REGIONS):
        x0, y0, x1, y1 = region_boxes(size)[r]
        masks[k, y0 : y1 + 1, x0 : x1 + 1] = 1.0
    border = masks[4:].amax(dim=0)
    return masks, border


# --------------------------------------------------------------------------- settings and keys


@dataclass(frozen=True)
class Settings:
    """What an audit's results depend on (besides the pictures)."""

    model: str
    weights: str  # digest of the model's parameters and buffers
    layer: str
    method: str
    target: str
    fit: str

    def key(self) -> str:
        blob = json.dumps(asdict(self) | {"schema": SCHEMA_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def weights_digest(model: Model) -> str:
    """Content hash of a model's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha256()
    for name, t in list(model.module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        arr = t.detach().to("cpu").contiguous()
        if arr.dtype == torch.bfloat16:
            arr = arr.float()
        h.update(memoryview(arr.numpy()).cast("B"))
    return h.hexdigest()[:16]


def content_hash(data: bytes | Image.Image) -> str:
    """SHA-256 of a picture's bytes (of its pixels, mode and size for an in-memory image)."""
    if isinstance(data, Image.Image):
        h = hashlib.sha256(f"{data.mode}{data.size}".encode())
        h.update(data.tobytes())
        return h.hexdigest()[:32]
    return hashlib.sha256(data).hexdigest()[:32]


# --------------------------------------------------------------------------- boxes


def read_boxes(path: str | os.PathLike | io.IOBase | pd.DataFrame) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{file: [(x0, y0, x1, y1), ...]}`` from a CSV ``file,x0,y0,x1,y1`` (several rows per file)."""
    if isinstance(path, pd.DataFrame):
        df = path
        where = "the boxes table"
    else:
        where = f"the boxes file {getattr(path, 'name', path)}"
        try:
            df = pd.read_csv(path, dtype={"file": str})
        except FileNotFoundError:
            raise AuditError(f"{where} does not exist.") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise AuditError(f"{where} is not a readable CSV ({type(exc).__name__}); write it as file,x0,y0,x1,y1.") from None
    df = df.rename(columns=lambda c: str(c).strip().lower())
    missing = [c for c in ("file", "x0", "y0", "x1", "y1") if c not in df.columns]
    if missing:
        raise AuditError(f"{where} lacks the column(s) {', '.join(missing)}; it needs file,x0,y0,x1,y1 (pixels of the original picture).")
    coords = df[["x0", "y0", "x1", "y1"]].apply(pd.to_numeric, errors="coerce")
    bad = coords.isna().any(axis=1) | df["file"].isna()
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header is line 1
        raise AuditError(f"{where}, line {line}: every row needs a file name and four numbers x0,y0,x1,y1.")
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    for f, x0, y0, x1, y1 in zip(df["file"].astype(str), *(coords[c].to_numpy(float) for c in ("x0", "y0", "x1", "y1"))):
        out.setdefault(f.strip().replace("\\", "/"), []).append((x0, y0, x1, y1))
    return out


def _view_box(box: tuple[float, float, float, float], size: tuple[int, int], pre, fit: str) -> tuple[float, float, float, float]:
    """A box in original pixels → model-view pixels (the geometry of ``Preprocess.view``)."""
    w, h = size
    s = pre.input_size
    x0, y0, x1, y1 = box
    if fit == "squash":
        sx, sy = s / w, s / h
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy
    scale = pre.resize_size / min(w, h)
    ox, oy = (w * scale - s) / 2.0, (h * scale - s) / 2.0
    return x0 * scale - ox, y0 * scale - oy, x1 * scale - ox, y1 * scale - oy


# --------------------------------------------------------------------------- the worker


@dataclass
class Entry:
    """One picture handed to a :class:`Worker`: the item, its class index (or None) and its boxes."""

    index: int
    item: Item
    label: int | None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


class Worker:
    """Explains batches of pictures with one model: used by the local engine and by each Ray actor."""

    def __init__(self, model: Model, method: str, layer: str | None, target: Target, fit: str,
                 settings_key: str, done: Iterable[str] = (), limits: ZipLimits | None = None) -> None:
        self.model = model
        self.method = get_method(method)
        self.layer = self.method.capture_layer(model, layer)
        self.layer_arg = layer
        self.target = target
        self.fit = fit
        self.settings_key = settings_key
        self.done = set(done)
        self.reader = Reader(limits)
        self.size = model.preprocess.input_size
        self.masks, self.border = _region_masks(self.size)
        self.mask_area = self.masks.sum(dim=(1, 2))
        self.skipped = 0

    def process(self, entries: Sequence[Entry]) -> tuple[list[dict], np.ndarray]:
        """Rows for the entries not done yet and the maps ``[k, h, w]`` of their ok rows (map_index
        counts within this batch)."""
        rows: list[dict] = []
        good: list[tuple[Entry, dict, Image.Image]] = []
        cats = self.model.categories
        for e in entries:
            row = _blank_row(e)
            if e.label is not None:
                row["label_name"] = cats[e.label]
            if e.item.error:
                self._unreadable(row, e, e.item.error, rows)
                continue
            try:
                data = self.reader.read(e.item)
            except (OSError, ExplainError, RuntimeError) as exc:
                self._unreadable(row, e, _reason(exc, "could not be read"), rows)
                continue
            digest = content_hash(data)
            row["hash"] = digest
            row["key"] = _key(digest, e.item.file, self.settings_key)
            if row["key"] in self.done:
                self.skipped += 1
                continue
            try:
                if not isinstance(data, Image.Image) and looks_like_archive(data):
                    raise AuditError("is an archive, not a picture; unpack it first (nested archives are not opened).")
                image = load_image(data, name=pathlib.PurePosixPath(e.item.file).name) if not isinstance(data, Image.Image) else data.convert("RGB")
            except (ImageLoadError, AuditError) as exc:
                row["error"] = str(exc)
                rows.append(row)
                continue
            row["width"], row["height"] = image.size
            if self.target == "label" and e.label is None:
                row["error"] = "has no label, but the audit explains each picture's label (target='label'); put it in a class folder."
                rows.append(row)
                continue
            good.append((e, row, image))
            rows.append(row)
        if not good:
            return rows, np.zeros((0, 0, 0), np.float32)
        maps = self._explain(good)
        return rows, maps

    def _unreadable(self, row: dict, e: Entry, reason: str, rows: list[dict]) -> None:
        """A file that could not be read: a row with its reason, keyed by name (it has no content
        hash), unless an earlier run already recorded it."""
        row["error"] = reason
        row["key"] = _key("", e.item.file, self.settings_key)
        if row["key"] in self.done:
            self.skipped += 1
        else:
            rows.append(row)

    def _explain(self, good: list[tuple[Entry, dict, Image.Image]]) -> np.ndarray:
        model, pre = self.model, self.model.preprocess
        xs = []
        for _e, _row, image in good:
            view = pre.view(image, self.fit)
            xs.append(pre.to_tensor(view))  # polarity read from the picture, as explain() does
        x = torch.cat(xs).to(model.device)
        cap = model.capture_batch(x, self.layer)
        probs = cap.probs
        conf, pred = probs.max(dim=1)
        if self.target == "label":
            classes = [int(e.label) for e, _r, _i in good]  # type: ignore[arg-type]
        else:
            classes = [int(c) for c in pred.tolist()]
        maps = []
        if self.method.batchable:
            grads = cap.gradients(classes) if self.method.needs_gradients else None
            for i, cls in enumerate(classes):
                pic = cap.picture(i, cls, grads)
                maps.append(self.method.maps(model, pic, [cls])[0])
            del grads
        else:  # the method needs each picture's own graph: explain() picture by picture
            for (_e, _r, image), cls in zip(good, classes):
                r = explain_one(model, image, targets=[cls], layer=self.layer_arg, method=self.method.name, fit=self.fit)
                maps.append(r.maps[0].to(model.device))
        del cap
        m = torch.stack(maps).detach().float()
        self._measure(m, good, classes, pred, conf, probs)
        return m.cpu().numpy().astype(np.float32, copy=False)

    def _measure(self, maps: torch.Tensor, good, classes, pred, conf, probs) -> None:
        s = self.size
        up = F.interpolate(maps.cpu()[:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0].clamp_min(0.0)
        total = up.sum(dim=(1, 2))
        shares = torch.einsum("bhw,rhw->br", up, self.masks) / total[:, None]
        border = (up * self.border).sum(dim=(1, 2)) / total
        flat_peak = up.flatten(1).argmax(dim=1)
        cats = self.model.categories
        for k, (e, row, image) in enumerate(good):
            p, cls = int(pred[k]), classes[k]
            live = float(total[k]) > 0
            row.update(
                status="ok", error="", prediction=p, prediction_name=cats[p], confidence=float(conf[k]),
                explained=cls, explained_name=cats[cls], explained_prob=float(probs[k, cls]),
                correct=(p == e.label) if e.label is not None else None, map_index=k,
                peak_x=int(flat_peak[k]) % s if live else None, peak_y=int(flat_peak[k]) // s if live else None,
                border_share=float(border[k]) if live else None,
            )
            for j, r in enumerate(REGIONS):
                row[_SHARE_COLUMNS[r]] = float(shares[k, j]) if live else None
            if e.boxes:
                self._box_scores(row, e, image, up[k], live)

    def _box_scores(self, row: dict, e: Entry, image: Image.Image, up: torch.Tensor, live: bool) -> None:
        w, h = image.size
        s = self.size
        mask = torch.zeros(s, s)
        notes, used = [], 0
        inside = False
        for box in e.boxes:
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                notes.append(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}×{h} picture or is empty; ignored")
                continue
            vx0, vy0, vx1, vy1 = _view_box(box, (w, h), self.model.preprocess, self.fit)
            ix0, iy0 = max(0, math.floor(vx0)), max(0, math.floor(vy0))
            ix1, iy1 = min(s, math.ceil(vx1)), min(s, math.ceil(vy1))
            if ix1 <= ix0 or iy1 <= iy0:
                notes.append(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) falls outside the model's view (centre crop); ignored")
                continue
            mask[iy0:iy1, ix0:ix1] = 1.0
            used += 1
            if live and ix0 <= row["peak_x"] < ix1 and iy0 <= row["peak_y"] < iy1:
                inside = True
        row["boxes"] = used
        if notes:
            row["note"] = "; ".join(notes) + "."
        if used and live:
            row["box_share"] = float((up * mask).sum() / up.sum())
            row["box_hit"] = inside


def _key(digest: str, file: str, settings_key: str) -> str:
    return hashlib.sha256(f"{settings_key}\0{digest}\0{file}".encode()).hexdigest()[:32]


def _reason(exc: BaseException, what: str) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{what} ({exc.strerror})."
    return str(exc) if isinstance(exc, ExplainError) else f"{what} ({type(exc).__name__}: {exc})."


COLUMNS: dict[str, str] = {
    "file": "string", "status": "string", "error": "string", "note": "string", "hash": "string",
    "width": "Int64", "height": "Int64", "label": "Int64", "label_name": "string",
    "prediction": "Int64", "prediction_name": "string", "confidence": "Float64", "correct": "boolean",
    "explained": "Int64", "explained_name": "string", "explained_prob": "Float64",
    "peak_x": "Int64", "peak_y": "Int64", "border_share": "Float64",
    **{c: "Float64" for c in _SHARE_COLUMNS.values()},
    "boxes": "Int64", "box_share": "Float64", "box_hit": "boolean",
    "map_index": "Int64", "source_index": "Int64", "key": "string",
}


def _blank_row(e: Entry) -> dict:
    row: dict = {c: None for c in COLUMNS}
    row.update(file=e.item.file, status="failed", error="", note="", label=e.label, map_index=-1, source_index=e.index, boxes=0)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows → the audit table with its fixed column types (the same schema in every part file)."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.astype(COLUMNS)


# --------------------------------------------------------------------------- storage


class _Store:
    """An output folder: finished results plus the part files of the run in progress."""

    def __init__(self, out: str | os.PathLike, settings: Settings) -> None:
        self.dir = pathlib.Path(out)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / PARTS_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise AuditError(f"Cannot create the output folder {self.dir}: {exc.strerror or exc}.") from None
        self.settings = settings
        summary = self.dir / SUMMARY_FILE
        if summary.exists():
            try:
                old = json.loads(summary.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            key = old.get("settings", {}).get("key")
            if key and key != settings.key():
                raise AuditError(
                    f"{self.dir} holds an audit made with other settings ({_settings_text(old.get('settings', {}))}); "
                    "choose another output folder, or empty this one to start over."
                )
        self.tables: list[pd.DataFrame] = []
        self.map_sources: list[np.ndarray] = []
        if (self.dir / TABLE_FILE).exists():
            self.tables.append(pd.read_parquet(self.dir / TABLE_FILE).astype(COLUMNS))
            self.map_sources.append(np.load(self.dir / MAPS_FILE, mmap_mode="r") if (self.dir / MAPS_FILE).exists() else np.zeros((0, 0, 0), np.float32))
        # Parts left by an interrupted run: finished batches, kept.
        for part in sorted((self.dir / PARTS_DIR).glob("part-*.parquet")):
            maps_path = part.with_suffix(".npy")
            if not maps_path.exists():
                continue
            try:
                t = pd.read_parquet(part).astype(COLUMNS)
                m = np.load(maps_path, mmap_mode="r")
            except Exception:  # noqa: BLE001 - a part cut off mid-write is simply redone
                continue
            self.tables.append(t)
            self.map_sources.append(m)
        self._run = uuid.uuid4().hex[:8]
        self._seq = 0

    def done_keys(self) -> set[str]:
        return {k for t in self.tables for k in t["key"].dropna()}

    def append(self, rows: list[dict], maps: np.ndarray) -> None:
        """Write one batch (maps first, so a part's table only exists with its maps)."""
        if not rows:
            return
        t = frame(rows)
        name = f"part-{self._run}-{self._seq:06d}"
        self._seq += 1
        parts = self.dir / PARTS_DIR
        np.save(parts / f"{name}.npy", maps if maps.size else np.zeros((0, 1, 1), np.float32))
        t.to_parquet(parts / f"{name}.parquet.tmp", engine="pyarrow", index=False)
        os.replace(parts / f"{name}.parquet.tmp", parts / f"{name}.parquet")
        self.tables.append(t)
        self.map_sources.append(np.load(parts / f"{name}.npy", mmap_mode="r"))

    def finish(self, source_files: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
        """Merge everything into the final files; returns the table and the (memory-mapped) maps."""
        table, maps = merge(self.tables, self.map_sources, source_files, self.dir / (MAPS_FILE + ".tmp"))
        table.to_parquet(self.dir / (TABLE_FILE + ".tmp"), engine="pyarrow", index=False)
        os.replace(self.dir / (MAPS_FILE + ".tmp"), self.dir / MAPS_FILE)
        os.replace(self.dir / (TABLE_FILE + ".tmp"), self.dir / TABLE_FILE)
        for p in (self.dir / PARTS_DIR).glob("part-*"):
            p.unlink(missing_ok=True)
        try:
            (self.dir / PARTS_DIR).rmdir()
        except OSError:
            pass  # something else was put there: leave it
        return table, np.load(self.dir / MAPS_FILE, mmap_mode="r")

    def write_json(self, name: str, data: object) -> None:
        tmp = self.dir / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
        os.replace(tmp, self.dir / name)


def merge(tables: list[pd.DataFrame], map_sources: list[np.ndarray], source_files: Sequence[str],
          maps_path: pathlib.Path | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """One table (the source's pictures in source order first, then older rows) and its maps."""
    if not tables:
        return frame([]), np.zeros((0, 1, 1), np.float32)
    parts = []
    for k, t in enumerate(tables):
        t = t.copy()
        t["_part"] = k
        parts.append(t)
    table = pd.concat(parts, ignore_index=True)
    table = table.drop_duplicates(subset="key", keep="last")
    order = {f: i for i, f in enumerate(source_files)}
    table["_order"] = table["file"].map(order).fillna(len(order)).astype(np.int64)
    table = table.sort_values(["_order", "file"], kind="stable").reset_index(drop=True)
    ok = (table["status"] == "ok").to_numpy()
    shapes = {tuple(m.shape[1:]) for m, t in zip(map_sources, tables) if len(m) and (t["status"] == "ok").any()}
    shape = shapes.pop() if shapes else (1, 1)
    n = int(ok.sum())
    if maps_path is not None:
        out = np.lib.format.open_memmap(maps_path, mode="w+", dtype=np.float32, shape=(n, *shape))
    else:
        out = np.zeros((n, *shape), np.float32)
    new_index = np.full(len(table), -1, np.int64)
    k = 0
    for i in np.flatnonzero(ok):
        part = int(table["_part"].iat[i])
        out[k] = map_sources[part][int(table["map_index"].iat[i])]
        new_index[i] = k
        k += 1
    table["map_index"] = pd.array(new_index, dtype="Int64")
    table = table.drop(columns=["_part", "_order"])
    if maps_path is not None:
        out.flush()
        del out
        return table, np.zeros((0,), np.float32)
    return table, out


def _settings_text(s: dict) -> str:
    return ", ".join(f"{k} {s.get(k)}" for k in ("model", "layer", "method", "target", "fit") if k in s)


def _json_default(o: object) -> object:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


# --------------------------------------------------------------------------- the entry point


def audit(
    model: Model,
    source: object,
    method: str = DEFAULT_METHOD,
    layer: str | None = None,
    target: Target = "predicted",
    batch_size: int = 32,
    out: str | os.PathLike | None = None,
    engine: Literal["local", "ray"] = "local",
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    boxes: str | os.PathLike | pd.DataFrame | None = None,
    *,
    fit: str = "squash",
    limits: ZipLimits | None = None,
    ray_options: dict | None = None,
) -> Audit:
    """Explain every picture of ``source`` (folder, ``.zip`` or list) and sum it up in an :class:`Audit`.

    ``target``: ``"predicted"`` explains each picture's top-1 class, ``"label"`` its true class
    (from the ImageFolder layout). ``out``: a folder to stream results to and resume from.
    ``progress(done, total)`` is called after each batch; ``cancel()`` is asked before each
    batch: when it returns True the audit stops there, keeps what is finished (on disk too) and
    returns with ``summary["cancelled"]``. Bad pictures become failed rows; problems with the
    whole run (no pictures, a labels folder that is no class, a bad boxes file, options) raise
    :class:`AuditError` (an :class:`ExplainError`).
    """
    t0 = time.perf_counter()
    if target not in ("predicted", "label"):
        raise AuditError(f"Unknown target {target!r}: use 'predicted' (the top-1 class) or 'label' (the true class).")
    if engine not in ("local", "ray"):
        raise AuditError(f"Unknown engine {engine!r}: use 'local' or 'ray'.")
    try:
        batch_size = int(batch_size)
    except (TypeError, ValueError):
        raise AuditError(f"batch_size must be a whole number, not {batch_size!r}.") from None
    if not 1 <= batch_size <= 4096:
        raise AuditError(f"batch_size {batch_size} is out of range: use 1 to 4096.")
    if fit not in ("squash", "crop"):
        raise AuditError(f"Unknown fit {fit!r}: use squash or crop.")
    m = get_method(method)
    if not m.on_input:
        m.check(model, layer or model.default_layer)
    layer_name = m.capture_layer(model, layer)
    box_table = read_boxes(boxes) if boxes is not None else {}
    items = collect(source, limits)
    if out is not None:  # an output folder inside the source folder is not part of the set
        inside = pathlib.Path(out).resolve()
        items = [i for i in items if not (i.ref[0] == "file" and inside in pathlib.Path(i.ref[1]).resolve().parents)]
    entries = _entries(model, items, box_table)
    settings = Settings(model.name, weights_digest(model), layer_name, m.name, target, fit)
    store = _Store(out, settings) if out is not None else None
    done = store.done_keys() if store is not None else set()

    if engine == "ray":
        tables, map_sources, new, skipped, cancelled = run_ray(
            model, entries, m.name, layer, target, fit, settings.key(), done, batch_size, limits,
            progress, ray_options or {}, store,
        )
    else:
        tables, map_sources, new, skipped, cancelled = _run_local(
            model, entries, m.name, layer, target, fit, settings.key(), done, batch_size, limits, progress, cancel, store,
        )
    files = [e.item.file for e in entries]
    if store is not None:
        table, maps = store.finish(files)
    else:
        table, maps = merge(tables, map_sources, files)
    seconds = time.perf_counter() - t0
    summary = _summary(table, settings, new, skipped, seconds, cancelled, len(entries), batch_size, engine, box_table, files,
                       model.preprocess.input_size)
    result = Audit(table, maps, summary, model.categories, model.preprocess.input_size)
    if store is not None:
        store.write_json(SUMMARY_FILE, summary)
        store.write_json(SHORTCUTS_FILE, [f.to_dict() for f in result.shortcuts()])
    return result


def _entries(model: Model, items: list[Item], box_table: dict) -> list[Entry]:
    """Items with their labels resolved to class indices (an unknown folder name stops the run)."""
    resolved: dict[object, int] = {}
    entries: list[Entry] = []
    for i, item in enumerate(items):
        label = None
        if item.label is not None and not item.error:
            if item.label not in resolved:
                try:
                    resolved[item.label] = _class_of(model, item.label)
                except UnknownClassError:
                    few = ", ".join(model.categories[:5])
                    raise AuditError(
                        f"The folder '{item.label}' is no class of model '{model.name}': class folders must be named "
                        f"by a class name or index (e.g. {few}, … or 0–{model.num_classes - 1})."
                    ) from None
            label = resolved[item.label]
        boxes = box_table.get(item.file) or box_table.get(pathlib.PurePosixPath(item.file).name) or []
        entries.append(Entry(i, item, label, list(boxes)))
    return entries


def _class_of(model: Model, label: str | int) -> int:
    if isinstance(label, str):
        key = label.strip().lower()
        for i, c in enumerate(model.categories):  # a name first: digit classes are named "0".."9"
            if c.lower() == key:
                return i
    return model.class_index(label)


def _run_local(model, entries, method, layer, target, fit, settings_key, done, batch_size, limits, progress, cancel, store):
    worker = Worker(model, method, layer, target, fit, settings_key, done, limits)
    rows_kept: list[dict] = []  # without an output folder: one table at the end, not one per batch
    maps_kept: list[np.ndarray] = []
    offset = 0
    new = 0
    cancelled = False
    total = len(entries)
    try:
        for start in range(0, total, batch_size):
            if cancel is not None and cancel():
                cancelled = True
                break
            rows, maps = worker.process(entries[start : start + batch_size])
            new += len(rows)
            if store is not None:
                store.append(rows, maps)
            elif rows:
                for r in rows:
                    if r["map_index"] >= 0:
                        r["map_index"] += offset
                rows_kept.extend(rows)
                if maps.size:
                    maps_kept.append(maps)
                    offset += len(maps)
            _trim()
            if progress is not None:
                progress(min(total, start + batch_size), total)
    finally:
        worker.reader.close()
    tables = [frame(rows_kept)] if rows_kept else []
    map_sources = [np.concatenate(maps_kept)] if maps_kept else [np.zeros((0, 1, 1), np.float32)]
    return tables, map_sources, new, worker.skipped, cancelled


def _load_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim`` where there is one (else a no-op).

    Each batch frees its large activations; glibc then raises its mmap threshold and serves the next
    batch from the heap, which fragments and grows by ~0.1 MB per picture. Handing the freed pages
    back after each batch keeps the memory bounded by the batch size, not by the number of pictures.
    """
    try:
        import ctypes

        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def trim() -> None:
        malloc_trim(0)

    return trim


_trim = _load_trim()


def _summary(table: pd.DataFrame, settings: Settings, new: int, skipped: int, seconds: float, cancelled: bool,
             n_source: int, batch_size: int, engine: str, box_table: dict, files: Sequence[str],
             view_size: int) -> dict:
    ok = table[table["status"] == "ok"]
    labelled = ok.dropna(subset=["label"])
    correct = int(labelled["correct"].fillna(False).astype(bool).sum()) if len(labelled) else 0
    known = set(files) | {pathlib.PurePosixPath(f).name for f in files}
    unmatched = sorted(f for f in box_table if f not in known)
    done_here = int(table["file"].isin(set(files)).sum())
    return {
        "pictures": int(len(table)),
        "ok": int(len(ok)),
        "failed": int(len(table) - len(ok)),
        "labelled": int(len(labelled)),
        "correct": correct,
        "accuracy": (correct / len(labelled)) if len(labelled) else None,
        "mean_confidence": float(ok["confidence"].astype(float).mean()) if len(ok) else None,
        "source_pictures": int(n_source),
        "done_this_run": int(new),
        "skipped_already_done": int(skipped),
        "complete": bool(not cancelled and done_here >= n_source),
        "cancelled": bool(cancelled),
        "seconds": round(seconds, 3),
        "pictures_per_second": round(new / seconds, 2) if seconds > 0 and new else None,
        "boxes_without_picture": unmatched[:20],
        "view_size": int(view_size),
        "settings": asdict(settings) | {"key": settings.key(), "batch_size": batch_size, "engine": engine},
    }


def load(out: str | os.PathLike, categories: Sequence[str] | None = None) -> Audit:
    """An audit written earlier to ``out`` (its table, maps and summary), without any model."""
    d = pathlib.Path(out)
    if not (d / TABLE_FILE).exists():
        raise AuditError(f"{d} holds no audit ({TABLE_FILE} is missing).")
    table = pd.read_parquet(d / TABLE_FILE).astype(COLUMNS)
    maps = np.load(d / MAPS_FILE, mmap_mode="r")
    summary = json.loads((d / SUMMARY_FILE).read_text(encoding="utf-8"))
    if categories is None:
        n = int(max(table["prediction"].max(skipna=True) or 0, table["label"].max(skipna=True) or 0)) + 1
        names = dict(zip(table["prediction"].dropna().astype(int), table["prediction_name"].dropna()))
        categories = [names.get(i, str(i)) for i in range(n)]
    size = int(summary.get("view_size") or 0) or max(int(maps.shape[-1]) * 8, 1)
    return Audit(table, maps, summary, categories, size)


__all__ = ["Audit", "AuditError", "Finding", "Settings", "ZipLimits", "audit", "find_shortcuts", "load", "read_boxes", "region_boxes"]


# ---- the Ray engine ------------------------------------------------------------------------------
# The audit on Ray Data (``explain.audit(..., engine="ray")``): for sets one machine cannot do.
#
# The pictures become a Ray dataset (one row per picture: a small pickled reference, never the
# decoded image), ``map_batches`` runs :class:`AuditActor`, which builds the model once per worker
# (GPUs when ``ray_options={"num_gpus": 1}``) and explains each batch with the same
# :class:`explain.audit.Worker` as the local engine, so rows and maps are the same. Results are written
# with Ray's Parquet writer (same columns as ``audit.parquet`` plus the map as bytes) and merged into
# the usual output files.
#
# Ray is optional and imported only here. ``ray.init()`` is called only when no Ray is running;
# it joins the cluster named by ``RAY_ADDRESS`` when that is set, else starts a local one (and shuts
# it down afterwards). Cancel is not supported on this engine.




MAP_COLUMN, SHAPE_COLUMN = "map", "map_shape"


class AuditActor:
    """A Ray Data actor: one model per worker, one :class:`Worker` call per batch."""

    def __init__(self, model_bytes: bytes, method: str, layer, target: str, fit: str, settings_key: str,
                 done: list[str], limits) -> None:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("CAM_EXPLORER_THREADS", "1"))))
        model = pickle.loads(model_bytes)
        self.worker = Worker(model, method, layer, target, fit, settings_key, done, limits)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        entries = [pickle.loads(b) for b in batch["entry"]]
        rows, maps = self.worker.process(entries)
        df = frame(rows)
        blobs, shapes = [], []
        for k in df["map_index"].to_numpy(dtype=np.int64):
            if k >= 0:
                blobs.append(np.ascontiguousarray(maps[k], dtype=np.float32).tobytes())
                shapes.append(list(maps[k].shape))
            else:
                blobs.append(b"")
                shapes.append([0, 0])
        df[MAP_COLUMN] = blobs
        df[SHAPE_COLUMN] = shapes
        return df


def split_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """A Ray result frame → (table, maps) with ``map_index`` into those maps."""
    ok = [i for i, b in enumerate(df[MAP_COLUMN]) if len(b)]
    if ok:
        shape = tuple(int(v) for v in df[SHAPE_COLUMN].iloc[ok[0]])
        maps = np.stack([np.frombuffer(df[MAP_COLUMN].iloc[i], np.float32).reshape(shape) for i in ok])
    else:
        maps = np.zeros((0, 1, 1), np.float32)
    index = np.full(len(df), -1, np.int64)
    index[ok] = np.arange(len(ok))
    table = df.drop(columns=[MAP_COLUMN, SHAPE_COLUMN]).astype(COLUMNS)
    table["map_index"] = pd.array(index, dtype="Int64")
    return table.reset_index(drop=True), maps


def run_ray(model, entries: list[Entry], method, layer, target, fit, settings_key, done, batch_size, limits,
            progress, options: dict, store):
    """Run the audit's batches on Ray Data; returns what the local engine returns."""
    try:
        import ray
    except ImportError:
        raise AuditError("engine='ray' needs Ray: pip install 'ray[data]' (or use engine='local').") from None
    started = False
    if not ray.is_initialized():
        init = {k: options[k] for k in ("num_cpus", "num_gpus", "_node_ip_address", "include_dashboard") if k in options}
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, **init)  # RAY_ADDRESS: join that cluster
        started = True
    try:
        ds = ray.data.from_items([{"entry": pickle.dumps(e)} for e in entries],
                                 override_num_blocks=max(1, min(len(entries) // max(batch_size, 1), 64)))
        kwargs = dict(
            fn_constructor_kwargs=dict(model_bytes=pickle.dumps(model), method=method, layer=layer, target=target,
                                       fit=fit, settings_key=settings_key, done=sorted(done), limits=limits),
            batch_size=batch_size, batch_format="pandas", concurrency=int(options.get("concurrency", 1)),
        )
        if options.get("num_gpus"):
            kwargs["num_gpus"] = options["num_gpus"]
        results = ds.map_batches(AuditActor, **kwargs)
        tables: list[pd.DataFrame] = []
        map_sources: list[np.ndarray] = []
        if store is not None:
            where = store.dir / ".parts" / f"ray-{uuid.uuid4().hex[:8]}"
            results.write_parquet(str(where))  # Ray's own Parquet writer, streaming
            frames = [pd.read_parquet(p) for p in sorted(pathlib.Path(where).glob("*.parquet"))]
        else:
            frames = [results.to_pandas()]
        new = 0
        for df in frames:
            if len(df):
                t, m = split_frame(df)
                new += len(t)
                if store is not None:
                    store.tables.append(t)
                    store.map_sources.append(m)
                else:
                    tables.append(t)
                    map_sources.append(m)
        if progress is not None:
            progress(len(entries), len(entries))
        # Rows skipped as done were not returned by the actors: count them here.
        skipped = len(entries) - new
        return tables, map_sources, new, skipped, False
    finally:
        if started:
            ray.shutdown()
