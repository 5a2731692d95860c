"""Shareable links: the page's settings mirrored in the URL's query parameters.

``?model=efficientnet_lite0&sample=cat.jpg&layer=bn2&method=gradcam&class=281&colormap=jet&…``

Reading happens once, on the first run of a session (:func:`incoming`): each value is checked
against what the app offers (a model, sample, layer, method or class that does not exist, a
malformed or out-of-range number) and, if valid, put into session state just before its control
is drawn (the ``apply_*`` functions, called by :func:`ui.widgets.sidebar`), together with the
"context" key that would otherwise reset it to its default. Whatever was ignored is listed in ONE
warning (:func:`warn_ignored`). Writing happens on every run after the sidebar
(:func:`publish`) and after a page's own controls (:func:`publish_page`), and only for values
that changed, so the browser's URL is not rewritten on every rerun.

An uploaded image or model cannot be shared: their parameters are left out of the link.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import streamlit as st

import explain
from ui import resources, state, text

# Query parameter names.
MODEL, SAMPLE, FIT, LAYER, METHOD, TARGET = "model", "sample", "fit", "layer", "method", "class"
COLORMAP, ALPHA, SMOOTH, NORMALIZE, CONTOUR = "colormap", "alpha", "smooth", "normalize", "contour"
CLASSES, METHODS, LAYERS = "classes", "methods", "layers"  # Compare classes / Compare methods & layers
OVERLAY, RAW_COLORMAP = "overlay", "rawcolormap"
CONTRAST = "rather"  # Explain: the class of "why A rather than B"

#: Parameters written by the sidebar (every page).
COMMON: tuple[str, ...] = (MODEL, SAMPLE, FIT, LAYER, METHOD, TARGET, COLORMAP, ALPHA, SMOOTH, NORMALIZE, CONTOUR,
                           OVERLAY, RAW_COLORMAP)
#: Parameters that belong to one page; other pages drop them.
PAGE_ONLY: tuple[str, ...] = (CLASSES, METHODS, LAYERS, CONTRAST)
KNOWN = COMMON + PAGE_ONLY

MAX_VALUE_CHARS = 2000  # longer values are not even parsed
MAX_SHOWN_CHARS = 40  # of a rejected value, in the warning
MAX_LIST = 16  # entries of a list parameter
ALPHA_STEP = 0.05  # the opacity slider's step
_INDEX = re.compile(r"\d{1,9}")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_LOG = logging.getLogger("cam_explorer")


@dataclass
class Incoming:
    """The link's parameters on a session's first run, and what was ignored of them (and why)."""

    params: dict[str, str]
    ignored: list[str] = field(default_factory=list)

    def take(self, name: str) -> str | None:
        """The value of ``name`` (each parameter is applied once)."""
        return self.params.pop(name, None)

    def ignore(self, name: str, value: str, why: str) -> None:
        """Remember that ``name=value`` was ignored because ``why``."""
        shown = value if len(value) <= MAX_SHOWN_CHARS else value[: MAX_SHOWN_CHARS - 1] + "…"
        self.ignored.append(f"{name}={shown!r} ({why})")


def incoming() -> Incoming | None:
    """The link's known parameters on the first run of this session, else ``None``."""
    ss = st.session_state
    if ss.get(state.SHARE_READ):
        return None
    ss[state.SHARE_READ] = True
    link = Incoming({})
    try:
        raw = st.query_params.to_dict()
    except Exception:  # noqa: BLE001 - a link must never take the app down
        return link
    for name in KNOWN:
        value = raw.get(name)
        if value is None:
            continue
        value = str(value)
        if len(value) > MAX_VALUE_CHARS:
            link.ignore(name, value, "too long")
        else:
            link.params[name] = value.strip()
    return link


def warn_ignored(link: Incoming | None) -> None:
    """One warning listing every ignored parameter (and anything left unapplied)."""
    if link is None:
        return
    for name, value in list(link.params.items()):  # e.g. a class for a page without an image
        link.ignore(name, value, "could not be applied")
    if link.ignored:
        st.warning(
            text.md_escape("Some settings in the link were ignored: " + "; ".join(link.ignored)
                            + ". The defaults are used instead.")
        )


# ---- parsing ----------------------------------------------------------------------------------


def _choice(link: Incoming, name: str, options: list[str] | tuple[str, ...], what: str) -> str | None:
    value = link.take(name)
    if value is None:
        return None
    if value in options:
        return value
    link.ignore(name, value, f"no such {what}")
    return None


def _number(link: Incoming, name: str, lo: float, hi: float) -> float | None:
    value = link.take(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        link.ignore(name, value, "not a number")
        return None
    if not math.isfinite(number):
        link.ignore(name, value, "not a finite number")
        return None
    if not lo <= number <= hi:
        link.ignore(name, value, f"must be between {lo:g} and {hi:g}")
        return None
    return number


def _class_index(value: str, m: explain.Model) -> int | None:
    if not _INDEX.fullmatch(value):
        return None
    index = int(value)
    return index if index < m.num_classes else None


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _class_list(link: Incoming, name: str, m: explain.Model) -> list[int] | None:
    value = link.take(name)
    if value is None:
        return None
    parts = _split(value)
    indices = [_class_index(v, m) for v in parts]
    if not parts or len(parts) > MAX_LIST or any(i is None for i in indices):
        link.ignore(name, value, f"needs up to {MAX_LIST} class indices 0–{m.num_classes - 1}, comma-separated")
        return None
    return list(dict.fromkeys(i for i in indices if i is not None))


def _name_list(link: Incoming, name: str, options: list[str] | tuple[str, ...], what: str) -> list[str] | None:
    value = link.take(name)
    if value is None:
        return None
    parts = _split(value)
    unknown = [p for p in parts if p not in options]
    if not parts or len(parts) > MAX_LIST or unknown:
        why = f"no such {what}: {', '.join(unknown)[:MAX_SHOWN_CHARS]}" if unknown else f"needs 1 to {MAX_LIST} {what}s"
        link.ignore(name, value, why)
        return None
    return list(dict.fromkeys(parts))


# ---- applying (each just before its control is drawn) -----------------------------------------


def apply_model(link: Incoming | None) -> None:
    """``model``: one of the models the picker offers (an uploaded model is never in a link)."""
    if link is None:
        return
    value = _choice(link, MODEL, list(resources.model_infos()), "model")
    if value is not None:
        st.session_state[state.MODEL] = value


def apply_image(link: Incoming | None, m: explain.Model) -> None:
    """``sample`` (a bundled sample's file name, nothing else) and ``fit``."""
    if link is None:
        return
    ss = st.session_state
    names = [fname for _t, fname, _i in resources.sample_gallery()]
    sample = _choice(link, SAMPLE, names, "sample")
    if sample is not None:
        ss[state.IMAGE_SOURCE] = "Sample"
        ss[state.SAMPLE] = sample
        ss[state.SAMPLE_CONTEXT] = m.name  # so the model's default sample does not replace it
    fit = _choice(link, FIT, explain.FITS, "fit")
    if fit is not None:
        ss[state.FIT] = fit


def apply_display(link: Incoming | None) -> None:
    """``colormap``, ``alpha``, ``smooth``, ``normalize``, ``contour``."""
    if link is None:
        return

    ss = st.session_state
    colormap = _choice(link, COLORMAP, explain.COLORMAPS, "colormap")
    if colormap is not None:
        ss[state.COLORMAP] = colormap
    alpha = _number(link, ALPHA, 0.0, 1.0)
    if alpha is not None:
        ss[state.ALPHA] = round(round(alpha / ALPHA_STEP) * ALPHA_STEP, 2)  # onto the slider's steps
    smooth = _number(link, SMOOTH, 0, state.SMOOTH_MAX)
    if smooth is not None:
        ss[state.SMOOTH] = round(smooth)
    normalize = _choice(link, NORMALIZE, explain.NORMALIZATIONS, "colour scale")
    if normalize is not None:
        ss[state.NORMALIZE] = normalize
    mode = _choice(link, OVERLAY, explain.OVERLAY_MODES, "overlay mode")
    if mode is not None:
        ss[state.OVERLAY_MODE] = mode
    raw_colormap = _choice(link, RAW_COLORMAP, explain.COLORMAPS, "raw map colormap")
    if raw_colormap is not None:
        ss[state.RAW_COLORMAP] = raw_colormap
    contour = link.take(CONTOUR)
    if contour is not None:
        if contour.lower() in _TRUE + _FALSE:
            ss[state.CONTOUR] = contour.lower() in _TRUE
        else:
            link.ignore(CONTOUR, contour, "use 1 or 0")


def apply_method(link: Incoming | None) -> None:
    """``method`` (the sidebar's) and ``methods`` (Compare methods & layers)."""
    if link is None:
        return
    method = _choice(link, METHOD, explain.method_names(), "method")
    if method is not None:
        st.session_state[state.METHOD] = method
    methods = _name_list(link, METHODS, explain.method_names(), "method")
    if methods is not None:
        st.session_state[state.COMPARE_METHODS] = methods


def apply_layer(link: Incoming | None, m: explain.Model) -> None:
    """``layer`` and ``layers``: candidate layers of the model actually loaded."""
    if link is None:
        return
    ss = st.session_state
    names = [n for n, _s in m.layers()]
    layer = _choice(link, LAYER, names, f"layer in {m.name}")
    if layer is not None:
        ss[state.LAYER] = layer
        ss[state.LAYER_CONTEXT] = m.name  # so the model's default layer does not replace it
    layers = _name_list(link, LAYERS, names, f"layer in {m.name}")
    if layers is not None:
        ss[state.COMPARE_LAYERS] = layers
        ss[state.GRID_CONTEXT] = m.name


def apply_classes(link: Incoming | None, m: explain.Model, digest: str) -> None:
    """``class`` and ``classes``: class indices of the model loaded, for the image shown."""
    if link is None:
        return
    ss = st.session_state
    # The context is stored with each class so that the top-1 default does not replace it.
    _apply_class(link, TARGET, m, state.TARGET, state.TARGET_CONTEXT, digest)
    classes = _class_list(link, CLASSES, m)
    if classes is not None:
        ss[state.COMPARE_CLASSES] = classes
        ss[state.COMPARE_CONTEXT] = (m.name, digest)
    _apply_class(link, CONTRAST, m, state.CONTRAST, state.CONTRAST_CONTEXT, digest)


def _apply_class(link: Incoming, param: str, m: explain.Model, key: str, context_key: str, digest: str) -> None:
    """One class index from the link into session state ``key`` (with its context), or one warning."""
    value = link.take(param)
    if value is None:
        return
    index = _class_index(value, m)
    if index is None:
        link.ignore(param, value, f"not a class index of {m.name} (0–{m.num_classes - 1})")
    else:
        st.session_state[key] = index
        st.session_state[context_key] = (m.name, digest)


# ---- writing ------------------------------------------------------------------------------------


def link_values(sel: state.Selection) -> dict[str, str | None]:
    """The sidebar's part of the link for ``sel`` (``None``: leave the parameter out)."""
    ss = st.session_state
    mine = resources.uploaded_model()
    uploaded_model = mine is not None and mine.name == sel.model_name
    is_sample = ss.get(state.IMAGE_SOURCE) == "Sample" and ss.get(state.SAMPLE) is not None
    return {
        MODEL: None if uploaded_model else sel.model_name,
        SAMPLE: str(ss[state.SAMPLE]) if is_sample else None,
        FIT: sel.fit,
        # Layer and class names only mean something for a model the link can name.
        LAYER: None if uploaded_model else sel.layer,
        METHOD: sel.method,
        TARGET: None if uploaded_model else str(sel.target),
        COLORMAP: sel.colormap,
        ALPHA: f"{sel.alpha:g}",
        SMOOTH: f"{sel.smooth:g}",
        NORMALIZE: sel.normalize,
        CONTOUR: "1" if sel.contour else "0",
        OVERLAY: sel.overlay_mode,
        RAW_COLORMAP: sel.raw_colormap or None,
    }


def _write(values: Mapping[str, str | None]) -> None:
    """Set the parameters that changed and drop those that are ``None``; nothing else."""
    try:
        current = st.query_params.to_dict()
        changed = {k: v for k, v in values.items() if v is not None and current.get(k) != v}
        gone = [k for k, v in values.items() if v is None and k in current]
        for key in gone:
            del st.query_params[key]
        if changed:
            st.query_params.update(changed)
    except Exception:  # noqa: BLE001 - an out-of-date link is better than a broken page
        _LOG.exception("Could not update the link")


def publish(sel: state.Selection) -> None:
    """Bring the sidebar's parameters of the link up to date with ``sel``."""
    _write(link_values(sel))


def publish_page(values: Mapping[str, list[int] | list[str]]) -> None:
    """Bring a page's own parameters up to date (``{"classes": [281, 285]}``); other pages' are dropped.

    An uploaded model's classes and layers are left out, like its name.
    """
    mine = resources.uploaded_model()
    sel = state.current()
    uploaded_model = mine is not None and sel is not None and mine.name == sel.model_name
    out: dict[str, str | None] = {name: None for name in PAGE_ONLY}
    for name, items in values.items():
        if uploaded_model and name in (CLASSES, LAYERS, CONTRAST):
            continue
        out[name] = ",".join(str(i) for i in items) if items else None
    _write(out)
