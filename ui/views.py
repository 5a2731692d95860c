"""Rendering helpers shared by the pages: the page guard, texts, charts and the explain call.

User-controlled strings (file names, category names, layer names) are only ever shown as plain
text or as Markdown with its special characters escaped; nothing here renders raw HTML.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator, Sequence

import numpy as np
import streamlit as st

import explain
from ui.state import Selection

try:  # Streamlit's own control flow (st.rerun, st.stop, page switches) must never be swallowed.
    from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException as _ControlFlow
except ImportError:  # pragma: no cover - older/newer Streamlit layouts
    _ControlFlow = ()  # type: ignore[assignment]

_LOG = logging.getLogger("cam_explorer")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~$])")
SHORT_MESSAGE = 200  # characters of an unexpected error shown to the user


def md_escape(text: object) -> str:
    """``text`` with Markdown's special characters escaped, so it renders literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


@contextlib.contextmanager
def guard(action: str) -> Iterator[None]:
    """Show an unexpected error as one readable ``st.error`` line instead of a traceback.

    ``action`` completes "Something went wrong while …". Streamlit's control-flow exceptions
    pass through untouched; the full traceback goes to the server log.
    """
    try:
        yield
    except _ControlFlow:
        raise
    except Exception as exc:  # noqa: BLE001 - the whole point: no traceback reaches the page
        _LOG.exception("Unexpected error while %s", action)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if len(message) > SHORT_MESSAGE:
            message = message[: SHORT_MESSAGE - 1] + "…"
        st.error(f"Something went wrong while {action}: {md_escape(message)}. Try another image or setting.")


def class_label(categories: Sequence[str], index: int) -> str:
    """``"281 · tabby"``: how a class is shown in pickers and captions."""
    return f"{index} · {categories[index]}"


def percent(p: float) -> str:
    """A probability as a short percentage (``"62%"``, ``"0.4%"``, ``"<0.1%"``)."""
    value = 100.0 * float(p)
    if value >= 9.5:
        return f"{value:.0f}%"
    if value >= 0.1:
        return f"{value:.1f}%"
    return "<0.1%"


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def explanation_caption(r: explain.Explanation, index: int = 0) -> str:
    """One plain-language sentence on what the map of target ``index`` of ``r`` means.

    Returns plain text (Markdown-escaped): the caller shows it with ``st.markdown``.
    """
    top_i, top_name, top_p = r.predictions[0]
    target, name = r.targets[index], r.target_names[index]
    saliency = r.method == "saliency"
    if target == top_i:
        opening = f"The model is {percent(top_p)} sure this is {_article(top_name)} {top_name}; "
        if saliency:
            rest = f"the bright pixels are those whose change would move the score for '{name}' the most."
        else:
            rest = f"the highlighted region is what pushed its score for '{name}' up the most."
    else:
        opening = f"The model's top guess is {top_name} ({percent(top_p)}); for '{name}' ({percent(r.prob(target))}) "
        if saliency:
            rest = "the bright pixels are those whose change would move that score the most."
        else:
            rest = "the highlighted region is what pushed that score up the most."
    return md_escape(opening + rest)


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


@st.cache_data(max_entries=64, show_spinner=False)
def heatmap_png(raw: np.ndarray, colormap: str) -> bytes:
    """The raw map with its colour bar (a matplotlib figure) as PNG bytes.

    Cached by the map's values and the colormap: drawing the figure (~55 ms) is the most
    expensive step of a class or colormap change.
    """
    from explain import render

    fig = render.heatmap_figure(np.asarray(raw, dtype=np.float32), colormap)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, pil_kwargs={"compress_level": FAST_PNG})
    return buf.getvalue()


#: PNG compression for pictures shown on a page: ~4× faster to encode than the default, ~10% larger.
FAST_PNG = 1


def png(image) -> bytes:
    """A page picture as PNG bytes (exact pixels, unlike Streamlit's default JPEG), encoded fast.

    Show it with ``output_format="PNG"``: on "auto" Streamlit re-encodes opaque pictures as JPEG.
    """
    from explain import render

    return render.to_png_bytes(image, compress_level=FAST_PNG)


def show_top5(predictions: Sequence[tuple[int, str, float]]) -> None:
    """Draw the top-5 chart where the caller is (e.g. the sidebar)."""
    st.image(top5_png(tuple((int(i), str(n), float(p)) for i, n, p in predictions)), width="stretch")


def npy_bytes(maps: np.ndarray) -> bytes:
    """A ``.npy`` file of the raw maps (for the download button)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(maps, dtype=np.float32))
    return buf.getvalue()


def run_explain(
    m: explain.Model,
    sel: Selection,
    targets: Sequence[int],
    *,
    layer: str | None = None,
    method: str | None = None,
    where: st.delta_generator.DeltaGenerator | None = None,
) -> explain.Explanation:
    """``explain.explain`` for the selection, with a spinner, or a progress bar for Score-CAM.

    Raises the engine's errors (``MethodNotApplicableError`` etc.) for the caller to show.
    """
    method = method or sel.method
    layer = layer or sel.layer
    where = where if where is not None else st.container()
    title = explain.TITLES.get(method, method)
    if method == "scorecam":
        bar = where.progress(0.0, text=f"{title}: masking the image with each channel…")

        def progress(done: int, total: int) -> None:
            # Redrawing the bar is also where a rerun requested by the user interrupts Score-CAM.
            bar.progress(min(1.0, done / max(total, 1)), text=f"{title}: {done} of {total} masked images")

        r = explain.explain(m, sel.image, targets=list(targets), layer=layer, method=method, fit=sel.fit, progress=progress)
        bar.empty()
        return r
    with where, st.spinner(f"Computing {title}…"):
        return explain.explain(m, sel.image, targets=list(targets), layer=layer, method=method, fit=sel.fit)


def overlays(r: explain.Explanation, sel: Selection, normalize: str | None = None) -> list:
    """The overlays of ``r`` with the selection's display settings (no forward pass)."""
    return r.overlays(
        normalize=normalize or sel.normalize,
        colormap=sel.colormap,
        alpha=sel.alpha,
        smooth=sel.smooth,
        contour=sel.contour,
    )


NOT_APPLICABLE_HEIGHT = 230  # px: about one overlay tile in a four-column grid


def not_applicable(err: Exception) -> None:
    """A grid cell that says why a method does not apply, instead of an image."""
    with st.container(border=True, height=NOT_APPLICABLE_HEIGHT):
        st.markdown("**Not applicable here**")
        st.caption(md_escape(err))


def show_notices(r: explain.Explanation) -> None:
    """Each engine notice (e.g. a CPU fallback) as an info box."""
    for note in r.notices:
        st.info(md_escape(note))


def ensure_app_entry() -> None:
    """Rerun through ``app.py`` when Streamlit ran this page script on its own.

    A ``pages/`` folder next to the main script makes Streamlit start in its legacy multipage
    mode until the first ``st.navigation`` call of the server's life; a deep link opened first
    after a restart (``/compare_classes``) would then run the page without ``app.py``, i.e.
    without the sidebar. Leaving that mode and rerunning keeps the requested page.

    A consequence for page authors: ``AppTest`` starts every run in that mode, so the rerun here
    drops a click read as ``if st.button(...)``. Page buttons act through ``on_click`` callbacks,
    which run before the script and survive the rerun.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a Streamlit without the legacy mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def need_selection() -> Selection:
    """This run's selection with an image, or a friendly note and ``st.stop()``."""
    from ui import state

    ensure_app_entry()
    sel = state.current()
    if sel is None:
        st.info("The controls in the sidebar could not be set up; see the message there.")
        st.stop()
    if sel.image is None:
        st.info("Choose a sample or upload an image in the sidebar to begin.")
        st.stop()
    return sel


# ---- small generic helpers for the pages that run long computations or show small grids ------------

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image


def map_image(values: np.ndarray, colormap: str = "viridis", *, lo: float | None = None, hi: float | None = None,
              size: int = 168) -> Image.Image:
    """A small ``[h, w]`` grid of numbers as a colour picture ``size`` pixels wide.

    ``lo``/``hi`` fix the colour scale (so several maps can share one); by default the map's own
    range. Nearest-neighbour enlargement keeps each cell a visible square: on a page that teaches
    how a 7×7 map is made, smoothing would hide the very grid being explained.
    """
    from PIL import Image as _Image

    from explain import render

    a = np.asarray(values, dtype=np.float32)
    lo = float(a.min()) if lo is None else float(lo)
    hi = float(a.max()) if hi is None else float(hi)
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    rgb = render.colorize(np.clip(scaled, 0.0, 1.0), colormap)
    h, w = a.shape
    height = max(1, round(size * h / max(w, 1)))
    return _Image.fromarray(rgb).resize((size, height), _Image.Resampling.NEAREST)


def progress_callback(bar: st.delta_generator.DeltaGenerator, text: str) -> Callable[[int, int], None]:
    """An engine ``progress(done, total)`` callback that redraws ``bar`` with ``text`` formatted by
    ``done`` and ``total`` (e.g. ``"Curves: {done} of {total} images"``).

    Redrawing the bar is also where Streamlit stops the script when the user changes a control, so
    a long engine call stays interruptible between its batches.
    """

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=text.format(done=done, total=total))

    return progress


def heartbeat(slot: st.delta_generator.DeltaGenerator, text: str) -> Callable[[], bool]:
    """An engine ``cancel()`` check that never cancels by itself but redraws ``slot`` as a caption.

    Engine loops call ``cancel()`` between batches (Score-CAM's masked images, the sanity check's
    stages); redrawing something there gives Streamlit the chance to interrupt the run when the
    user changes a control, even where the engine reports no progress.
    """
    beats = [0]

    def cancel() -> bool:
        beats[0] += 1
        slot.caption(f"{text} {'·' * (1 + beats[0] % 3)}")
        return False

    return cancel
