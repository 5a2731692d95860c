"""Session-state keys (named once, here) and the selection the sidebar hands to every page.

The sidebar controls are drawn by ``app.py`` on every run, whatever the page, so their widget
state survives page switches. After drawing them, ``ui.widgets.sidebar()`` stores one
:class:`Selection` under :data:`SELECTION`; pages read it with :func:`current`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st
from PIL import Image

import explain

# ---- widget ranges and defaults ------------------------------------------------------------------
DEFAULT_SAMPLE = explain.COLOUR_SAMPLE  # the sample a colour model starts with
DIGIT_SAMPLE = explain.GREY_SAMPLE  # the sample a greyscale model starts with
TOP_K = 5  # predictions in the sidebar chart and the default Compare classes set
SMOOTH_MAX = 20  # px; the model view is 224 px wide
GALLERY_COLUMNS = 3

# ---- widget keys (sidebar, shared by all pages) ------------------------------------------------
MODEL = "cx.model"  # selectbox: model name
IMAGE_SOURCE = "cx.image_source"  # radio: one of IMAGE_SOURCES
SAMPLE = "cx.sample"  # selectbox: sample file name
UPLOAD = "cx.upload"  # file_uploader
CAMERA = "cx.camera"  # camera_input
FIT = "cx.fit"  # radio: explain.FITS
LAYER = "cx.layer"  # selectbox: layer name
METHOD = "cx.method"  # selectbox: explain.METHODS
TARGET = "cx.target"  # selectbox: class index
COLORMAP = "cx.colormap"
ALPHA = "cx.alpha"  # overlay opacity slider
SMOOTH = "cx.smooth"  # smoothing sigma slider, pixels
NORMALIZE = "cx.normalize"  # radio: explain.NORMALIZATIONS
CONTOUR = "cx.contour"  # checkbox
OVERLAY_MODE = "cx.overlay_mode"  # segmented control: explain.render.OVERLAY_MODES
HEAT_WEIGHT = "cx.heat_weight"  # slider: the heat's weight in "add" mode
IMAGE_WEIGHT = "cx.image_weight"  # slider: the picture's weight in "add" mode
RAW_COLORMAP = "cx.raw_colormap"  # selectbox: the raw-map panel's colormap ("" = as the overlay)
ON_ORIGINAL = "cx.on_original"  # toggle: overlays on the original picture (else the model's view)
POLARITY = "cx.polarity"  # radio (greyscale models): explain.preprocess.POLARITIES

# ---- widget keys (pages) ---------------------------------------------------------------------
COMPARE_CLASSES = "cx.compare.classes"  # multiselect of class indices
CONTRAST = "cx.explain.contrast"  # selectbox: class index B of "why A rather than B", or None (Explain page)
CONTRAST_CONTEXT = "cx.explain.contrast_context"  # (model, image digest) the contrast class was chosen for
AGAINST_TOP = "cx.compare.against_top"  # toggle: each compared class against the top class
#: Prefix of the method-option widgets: ``option_key(method, param)`` (drawn from ``Method.params``).
OPTION_PREFIX = "cx.option."
SHARED_SCALE = "cx.compare.shared"  # toggle mirrored onto NORMALIZE
COMPARE_METHODS = "cx.grid.methods"  # multiselect of method names
COMPARE_LAYERS = "cx.grid.layers"  # multiselect of layer names
OWN_ARCH = "cx.own.arch"  # selectbox: architecture of an uploaded state_dict (Your model page)
OWN_WEIGHTS = "cx.own.weights"  # file_uploader: .pt/.pth/.safetensors
OWN_LABELS = "cx.own.labels"  # file_uploader: labels, one per line or a JSON list
OWN_SIZE = "cx.own.size"  # number_input: input size in pixels, 0 = the architecture's own
OWN_MEAN = "cx.own.mean"  # text_input: comma-separated normalisation mean ("" = default)
OWN_STD = "cx.own.std"  # text_input: comma-separated normalisation std ("" = default)
OWN_POLARITY = "cx.own.polarity"  # radio: polarity of the training pictures ("auto" = file / architecture)
EXPLAIN_RELATIVE = "cx.explain.relative"  # toggle (Explain page): scale relative to the top class

# ---- plain state (not widgets) -----------------------------------------------------------------
MODEL_GOOD = "cx.model_good"  # name of the last model that loaded
IMAGE_GOOD = "cx.image_good"  # (label, content digest, PIL image) of the last usable image
TARGET_CONTEXT = "cx.target_context"  # (model, image digest) the class default was chosen for
LAYER_CONTEXT = "cx.layer_context"  # model name the layer default was chosen for
SAMPLE_CONTEXT = "cx.sample_context"  # model name the sample default was chosen for
COMPARE_CONTEXT = "cx.compare.context"  # (model, image digest) the compared classes belong to
GRID_CONTEXT = "cx.grid.context"  # model the default grid layers were chosen for
SELECTION = "cx.selection"  # the Selection of this run
OWN_BUILD = "cx.own.build"  # True from the "Load my model" click until the page builds the model
UPLOADED = "cx.own.model"  # ui.resources.UploadedModel of this session (that user's own model)
MODEL_REQUEST = "cx.model_request"  # model name to select on the next run, before the picker is drawn
SHARE_READ = "cx.share.read"  # True once this session's link (query parameters) was read
# ---- the Audit page ------------------------------------------------------------------------------
AUDIT_SET = "cx.audit.set"  # radio: which pictures (a key of ui.audit_view.SETS, or "upload")
AUDIT_UPLOAD = "cx.audit.upload"  # file_uploader (many files, or zips)
AUDIT_TARGET = "cx.audit.target"  # radio: "predicted" or "label"
AUDIT_FILTER = "cx.audit.filter"  # radio: gallery filter (ui.audit_view.FILTERS)
AUDIT_RUN = "cx.audit.run"  # True from the Run click until the page starts the audit
AUDIT_CANCEL = "cx.audit.cancel"  # True from the Cancel click (the run in flight stops at its next batch)
AUDIT_RESULT = "cx.audit.result"  # ui.audit_view.Result of this session's last audit
AUDIT_DIR = "cx.audit.dir"  # this session's own scratch folder for resumable audit output
AUDIT_GOTO = "cx.audit.goto"  # True from an "Open in Explain" click until the page switches
PINNED_IMAGE = "cx.pinned_image"  # (label, bytes): a picture sent to Explain (e.g. from the audit)

#: Written by the Faithfulness page, read by the report: a :class:`FaithfulnessShown`.
FAITH_RESULTS = "cx.faith.results"
FAITH_METHODS = "cx.faith.methods"  # multiselect of method names (Faithfulness page)
FAITH_STEPS = "cx.faith.steps"  # select_slider: curve steps
FAITH_RUNS = "cx.faith.runs"  # {run key: rows from compare_methods}, the last few contexts
SANITY_RUNS = "cx.faith.sanity"  # {run key: SanityResult}, the last few contexts
FAITH_REQUEST = "cx.faith.request"  # run key whose curves the user asked for, until they are stored
SANITY_REQUEST = "cx.faith.sanity_request"  # the same for the sanity check

IMAGE_SOURCES: tuple[str, ...] = ("Sample", "Upload", "Camera")
#: A declared parameter with a wider range than this is a number box, not a slider (e.g. a seed).
SLIDER_MAX_SPAN = 1000


def option_key(method: str, param: str) -> str:
    """Session key of the widget for option ``param`` of ``method``."""
    return f"{OPTION_PREFIX}{method}.{param}"
NORMALIZE_LABELS: dict[str, str] = {"per_map": "per map", "shared": "shared"}
FIT_LABELS: dict[str, str] = {"squash": "squash", "crop": "centre crop"}
NORMALIZE_LABELS["max"] = "max"
POLARITY_LABELS: dict[str, str] = {"auto": "automatic", "dark_on_light": "dark on light", "light_on_dark": "light on dark"}
OVERLAY_LABELS: dict[str, str] = {"blend": "blend", "add": "add", "multiply": "multiply"}
HEAT_WEIGHT_DEFAULT, IMAGE_WEIGHT_DEFAULT = 0.5, 1.0  # cv2.addWeighted(heat, 0.5, image, 1.0, 0), as the lesson


@dataclass(frozen=True)
class Selection:
    """Everything the sidebar decided for this run; pages only read it."""

    model_name: str
    image: Image.Image | None
    image_label: str
    image_digest: str
    layer: str
    method: str
    target: int
    predictions: list[tuple[int, str, float]] = field(default_factory=list)  # top-5 of the image
    colormap: str = "jet"
    alpha: float = 0.5
    smooth: float = 0.0
    normalize: str = "per_map"
    contour: bool = False
    fit: str = "squash"
    options: dict[str, float | int] = field(default_factory=dict)  # of ``method``, from its option widgets
    overlay_mode: str = "blend"
    heat_weight: float = 0.5
    image_weight: float = 1.0
    raw_colormap: str = ""  # "" = the overlay's colormap
    on_original: bool = True
    polarity: str = "auto"  # greyscale models: how the picture is drawn ("auto": read from it)

    @property
    def raw_cmap(self) -> str:
        """The raw-map panel's colormap."""
        return self.raw_colormap or self.colormap


@dataclass(frozen=True)
class FaithfulnessShown:
    """The deletion/insertion results the Faithfulness page shows now (read by the report)."""

    context: tuple[str, str, int, str]  # (model, image digest, target, layer)
    results: dict[str, explain.FaithfulnessResult]  # by method name


def current() -> Selection | None:
    """The selection made by the sidebar in this run, or ``None`` if it could not be made."""
    sel = st.session_state.get(SELECTION)
    return sel if isinstance(sel, Selection) else None


def store(sel: Selection | None) -> None:
    """Publish this run's selection for the page (``None`` clears it)."""
    st.session_state[SELECTION] = sel
