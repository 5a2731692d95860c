"""From raw maps to pictures: normalise → upsample → smooth → colour → overlay. RGB throughout.

Raw maps are never changed in place; every function returns new arrays.
"""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import cv2
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .errors import ExplainError

Normalize = Literal["per_map", "shared", "max"]
NORMALIZATIONS: tuple[str, ...] = ("per_map", "shared", "max")
#: OpenCV's own JET (``cv2.applyColorMap(..., cv2.COLORMAP_JET)``), which differs from matplotlib's
#: ``jet`` by up to 34/255: what the OpenCV-based lessons draw.
CV2_JET = "cv2_jet"
COLORMAPS: tuple[str, ...] = ("jet", CV2_JET, "viridis", "inferno", "turbo", "magma", "plasma", "bwr", "gray")
#: How the coloured map meets the picture: ``blend`` (opacity), ``add`` (``heat_weight·heat +
#: image_weight·image``, clipped, as ``cv2.addWeighted``), ``multiply`` (the picture weighted by the map).
OVERLAY_MODES: tuple[str, ...] = ("blend", "add", "multiply")
#: Brightness of the parts of an original picture the model did not see (centre crop).
DIM_OUTSIDE = 0.35
REGION_THRESHOLD = 0.5  # the "top-activated region": heat at least half of the map's maximum

_EPS = 1e-12


def _as_numpy(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().to("cpu", torch.float32).numpy()
    return np.asarray(maps, dtype=np.float32)


def single_map(heat: torch.Tensor | np.ndarray, what: str = "A heatmap", dtype=np.float32) -> np.ndarray:
    """``heat`` as one finite 2-D ``[H, W]`` array (a leading batch of one is dropped), or an error."""
    if isinstance(heat, torch.Tensor):
        heat = heat.detach().cpu().numpy()
    h = np.asarray(heat, dtype=dtype)
    if h.ndim == 3 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2 or h.size == 0:
        raise ExplainError(f"{what} must be one 2-D [H, W] array, not an array of shape {h.shape}.")
    if not np.all(np.isfinite(h)):
        raise ExplainError(f"{what} contains NaN or infinite values, so it gives no pixel order.")
    return h


def normalize_maps(
    maps: torch.Tensor | np.ndarray, mode: Normalize = "per_map", clip_percentile: float | None = None,
    peak: float | None = None,
) -> np.ndarray:
    """Scale maps ``[K, h, w]`` to [0, 1].

    ``per_map``: min–max of each map on its own (every map gets a full-scale peak);
    ``shared``: one min–max over all maps, so weak evidence for a class looks weak;
    ``max``: each map (negative values cut to 0) divided by its maximum, as the lessons do, or by
    ``peak`` when given (e.g. the top class's maximum: a scale relative to the top class).
    ``clip_percentile`` (e.g. 99) takes that percentile as the top of the scale instead of the
    maximum: input-gradient maps are so sparse that a handful of pixels would otherwise take the
    whole colour range.
    """
    m = _as_numpy(maps)
    if m.ndim == 2:
        m = m[None]
    if mode == "max":
        m = np.maximum(m, 0.0)
        if peak is not None:
            hi = np.full((1, 1, 1), float(peak), np.float32)
        elif clip_percentile is not None and m.size:
            hi = np.percentile(m, clip_percentile, axis=(1, 2), keepdims=True).astype(np.float32)
        else:
            hi = m.max(axis=(1, 2), keepdims=True)
        out = np.where(hi > _EPS, m / np.maximum(hi, _EPS), 0.0)
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    if mode == "per_map":
        lo = m.min(axis=(1, 2), keepdims=True)
        if clip_percentile is not None and m.size:
            hi = np.percentile(m, clip_percentile, axis=(1, 2), keepdims=True).astype(np.float32)
        else:
            hi = m.max(axis=(1, 2), keepdims=True)
    elif mode == "shared":
        lo = np.full((1, 1, 1), min(float(m.min()), 0.0), np.float32) if m.size else np.zeros((1, 1, 1), np.float32)
        top = float(np.percentile(m, clip_percentile)) if clip_percentile is not None and m.size else None
        hi = np.full((1, 1, 1), top if top is not None else (float(m.max()) if m.size else 1.0), np.float32)
    else:
        raise ExplainError(f"Unknown normalisation {mode!r}: use one of {', '.join(NORMALIZATIONS)}.")
    span = hi - lo
    out = np.where(span > _EPS, (m - lo) / np.maximum(span, _EPS), 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[K, h, w]`` maps to ``size = (H, W)``."""
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    if tuple(t.shape[-2:]) == tuple(size):
        return maps.astype(np.float32)
    up = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return up[:, 0].numpy()


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in pixels of the upsampled map (0: none)."""
    if sigma <= 0:
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigmaX=float(sigma)) for m in maps]).astype(np.float32)


def heatmaps(
    maps: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    normalize: Normalize = "per_map",
    sigma: float = 0.0,
    clip_percentile: float | None = None,
    peak: float | None = None,
) -> np.ndarray:
    """Raw maps → ``[K, H, W]`` float32 in [0, 1] at ``size``: normalise, upsample, smooth."""
    normed = normalize_maps(maps, normalize, clip_percentile, peak)
    return np.clip(smooth(upsample(normed, size), sigma), 0.0, 1.0)


def _cv2_lut(cv2_map: int = cv2.COLORMAP_JET) -> np.ndarray:
    """OpenCV's colormap as a ``[256, 3]`` uint8 RGB table."""
    grey = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2_map), cv2.COLOR_BGR2RGB)[:, 0]


def mpl_colormap(colormap: str) -> "matplotlib.colors.Colormap":
    """The matplotlib colormap of a name in :data:`COLORMAPS` (OpenCV's JET as a 256-colour table)."""
    if colormap == CV2_JET:
        from matplotlib.colors import ListedColormap

        return ListedColormap(_cv2_lut() / 255.0, name=CV2_JET)
    try:
        return matplotlib.colormaps[colormap]
    except KeyError:
        raise ExplainError(f"Unknown colormap {colormap!r}: try one of {', '.join(COLORMAPS)}.") from None


def colorize(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` in [0, 1] → ``[H, W, 3]`` uint8 RGB through a matplotlib colormap.

    Exactly matplotlib's ``(cmap(heat)[..., :3] * 255 + 0.5).astype(uint8)``, read from a 256-entry
    table: matplotlib's own lookup goes through float RGBA for every pixel, ~5× slower. NaN gets
    the colormap's "bad" colour, as in matplotlib. ``cv2_jet`` is exactly
    ``cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)`` (as RGB).
    """
    x = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if colormap == CV2_JET:
        return _cv2_lut()[(x * 255.0).astype(np.uint8)]
    table, bad = _mpl_lut(colormap)
    n = len(table)
    nan = np.isnan(x)
    # matplotlib's index: floor(x·N), with x = 1 in the last bin (N is a power of two: x·N is exact).
    idx = np.minimum((np.where(nan, 0.0, x) * n).astype(np.intp), n - 1)
    out = table[idx]
    if nan.any():
        out[nan] = bad
    return out


@functools.lru_cache(maxsize=32)
def _mpl_lut(colormap: str) -> tuple[np.ndarray, np.ndarray]:
    """A matplotlib colormap as an ``[N, 3]`` uint8 RGB table, and its colour for NaN."""
    cmap = mpl_colormap(colormap)
    table = (cmap(np.arange(cmap.N))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    bad = (np.asarray(cmap(np.nan))[:3] * 255.0 + 0.5).astype(np.uint8)
    table.setflags(write=False)
    return table, bad


def region_mask(heat: np.ndarray, threshold: float = REGION_THRESHOLD) -> np.ndarray:
    """Boolean mask of the top-activated region (heat ≥ threshold × max)."""
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return np.zeros(heat.shape, bool)
    return heat >= threshold * peak


def region_box(heat: np.ndarray, threshold: float = REGION_THRESHOLD) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the largest connected top-activated region, or ``None``."""
    mask = region_mask(heat, threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return x, y, x + w - 1, y + h - 1


def overlay(
    image: Image.Image,
    heat: np.ndarray,
    colormap: str = "jet",
    alpha: float = 0.5,
    contour: bool = False,
    box: bool = False,
    threshold: float = REGION_THRESHOLD,
    *,
    mode: str = "blend",
    heat_weight: float = 0.5,
    image_weight: float = 1.0,
    inside: np.ndarray | None = None,
) -> Image.Image:
    """A coloured ``[H, W]`` heatmap laid over ``image`` (resized to the image if needed).

    ``mode``: ``blend`` (``(1 - alpha)·image + alpha·colour``), ``add``
    (``cv2.addWeighted(colour, heat_weight, image, image_weight, 0)``) or ``multiply`` (the picture
    times the map, so only what the map highlights stays visible). ``inside`` (boolean ``[H, W]``)
    marks the part of the picture the model saw; the rest is shown dimmed, without colour.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ExplainError(f"Overlay opacity must be between 0 and 1, not {alpha}.")
    if mode not in OVERLAY_MODES:
        raise ExplainError(f"Unknown overlay mode {mode!r}: use one of {', '.join(OVERLAY_MODES)}.")
    for what, v in (("heat", heat_weight), ("image", image_weight)):
        if not (np.isfinite(v) and 0.0 <= v <= 10.0):
            raise ExplainError(f"The {what} weight must be a number between 0 and 10, not {v}.")
    rgb = np.asarray(image.convert("RGB"))
    base = rgb.astype(np.float32)
    h, w = base.shape[:2]
    if heat.shape != (h, w):
        heat = upsample(heat[None], (h, w))[0]
    if mode == "add":
        out = cv2.addWeighted(colorize(heat, colormap), float(heat_weight), np.ascontiguousarray(rgb),
                              float(image_weight), 0.0)
    elif mode == "multiply":
        out = np.clip(base * np.clip(heat, 0.0, 1.0)[..., None], 0, 255).astype(np.uint8)
    else:
        colour = colorize(heat, colormap).astype(np.float32)
        out = np.clip((1.0 - alpha) * base + alpha * colour, 0, 255).astype(np.uint8)
    if inside is not None:
        out = np.where(inside[..., None], out, (base * DIM_OUTSIDE).astype(np.uint8))
    if contour or box:
        out = np.ascontiguousarray(out)
        thickness = max(1, round(min(h, w) / 150))
        if contour:
            mask = region_mask(heat, threshold).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, (255, 255, 255), thickness + 1)
            cv2.drawContours(out, contours, -1, (0, 0, 0), max(1, thickness - 1))
        if box:
            b = region_box(heat, threshold)
            if b is not None:
                cv2.rectangle(out, b[:2], b[2:], (255, 255, 255), thickness + 1)
    return Image.fromarray(out)


def heatmap_figure(raw: np.ndarray | torch.Tensor, colormap: str = "jet", title: str = "") -> "matplotlib.figure.Figure":
    """The raw map at its own resolution with a colour bar in its own units (a matplotlib Figure).

    A fixed layout rather than a constrained or "tight" one: those measure every text and draw
    twice, which made this figure the slowest step of a dashboard rerun (~120 ms against ~55 ms).
    """
    from matplotlib.figure import Figure  # no pyplot: thread-safe in a multi-user server

    m = _as_numpy(raw)
    top = 0.89 if title else 0.98
    # Sized for a square map (the usual case) so that it fills its axes; others keep their aspect.
    fig = Figure(figsize=(4, 3.45 if title else 3.1), dpi=100)
    ax = fig.add_axes((0.02, 0.02, 0.74, top - 0.02))
    cax = fig.add_axes((0.80, 0.08, 0.045, top - 0.14))
    im = ax.imshow(m, cmap=mpl_colormap(colormap), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, cax=cax)
    return fig


def grid(
    tiles: Sequence[Image.Image],
    captions: Sequence[str] = (),
    columns: int = 4,
    tile: int = 224,
) -> Image.Image:
    """One picture of several tiles with captions under them (for reports and the CLI)."""
    from PIL import ImageDraw, ImageFont

    if not tiles:
        raise ExplainError("Nothing to put in a grid.")
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    cap_h = 22 if captions else 0
    sheet = Image.new("RGB", (columns * tile, rows * (tile + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        x, y = c * tile, r * (tile + cap_h)
        pic = t.convert("RGB")
        if pic.width != pic.height:  # an overlay on a non-square original keeps its proportions
            scale = tile / max(pic.size)
            pic = pic.resize((max(1, round(pic.width * scale)), max(1, round(pic.height * scale))))
            sheet.paste(pic, (x + (tile - pic.width) // 2, y + (tile - pic.height) // 2))
        else:
            sheet.paste(pic.resize((tile, tile)), (x, y))
        if captions and i < len(captions):
            draw.text((x + 4, y + tile + 4), str(captions[i])[:40], fill="black", font=font)
    return sheet


def to_png_bytes(image: Image.Image, compress_level: int = 6) -> bytes:
    """PNG-encode a PIL image (for pages, download buttons and reports); lossless at every level.

    ``compress_level=1`` is ~4× faster for ~10% more bytes: what an interactive page wants. At
    levels ≤ :data:`FAST_PNG_MAX` RGB, RGBA and greyscale pictures go through OpenCV's libpng with
    one fixed filter and run-length deflate, about twice as fast again as Pillow's adaptive
    filters at the same size: this is the one encoding every page picture pays on every change.
    """
    import io

    if compress_level <= FAST_PNG_MAX and image.mode in _CV2_PNG_MODES:
        a = np.asarray(image)
        if a.ndim == 3:  # OpenCV writes BGR(A)
            a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        ok, buf = cv2.imencode(".png", a, [
            cv2.IMWRITE_PNG_COMPRESSION, int(compress_level), cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
        ])
        if ok:
            return buf.tobytes()
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


FAST_PNG_MAX = 3  # compress levels encoded through OpenCV (see to_png_bytes)
_CV2_PNG_MODES = ("RGB", "RGBA", "L")


# ---- the raw map as a picture, without matplotlib ----------------------------------------------------

RAW_MAP_SIZE = 320  # px: the long side of the map in the raw-map picture
_BAR_WIDTH, _GAP, _LABELS = 16, 8, 64  # px: colour bar, gap between map and bar, tick-label column
RAW_MAP_TICKS = 5


@functools.lru_cache(maxsize=64)
def _colour_bar(colormap: str, height: int) -> np.ndarray:
    """A vertical colour bar (top = the map's maximum), drawn once per colormap and height."""
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(_BAR_WIDTH, axis=1)
    bar = colorize(ramp, colormap)
    bar.setflags(write=False)
    return bar


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _tick(value: float) -> str:
    return f"{value:.3g}" if value != 0 else "0"


def raw_map_image(raw: np.ndarray | torch.Tensor, colormap: str = "jet", size: int = RAW_MAP_SIZE) -> Image.Image:
    """The raw map at its own resolution (nearest-neighbour, so each cell stays a visible square)
    with a colour bar labelled in the map's own units: the dashboard's fast stand-in for
    :func:`heatmap_figure` (~1 ms instead of ~60 ms: no matplotlib figure, the bar is cached)."""
    m = single_map(raw, "A raw map")
    lo, hi = float(m.min()), float(m.max())
    scaled = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    h, w = m.shape
    scale = size / max(h, w)
    mh, mw = max(1, round(h * scale)), max(1, round(w * scale))
    cells = Image.fromarray(colorize(scaled, colormap)).resize((mw, mh), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (mw + _GAP + _BAR_WIDTH + _LABELS, mh), "white")
    canvas.paste(cells, (0, 0))
    canvas.paste(Image.fromarray(_colour_bar(colormap, mh)), (mw + _GAP, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, round(size / 24)))
    x = mw + _GAP + _BAR_WIDTH + 4
    for k in range(RAW_MAP_TICKS):
        frac = k / (RAW_MAP_TICKS - 1)
        y = round(frac * (mh - 1))
        value = hi - frac * (hi - lo) if hi > lo else lo
        draw.line([(x - 4, y), (x - 1, y)], fill="black")
        anchor = "lt" if k == 0 else ("lb" if k == RAW_MAP_TICKS - 1 else "lm")
        draw.text((x + 1, y), _tick(value), fill="black", font=font, anchor=anchor)
    return canvas
