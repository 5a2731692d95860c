"""CAM Explorer's engine: where did an image classifier look?

Plain PyTorch (never Streamlit), usable as a library::

    import explain
    m = explain.load_model("efficientnet_lite0")
    r = explain.explain(m, explain.load_image("cat.jpg"), targets=[281], method="gradcam")
    r.heatmaps("per_map")   # [K, H, W] in [0, 1]

Data flow: image → preprocess → model → target layer → activations and gradients → map →
normalise → upsample/colour/overlay.
"""

from __future__ import annotations

from .errors import (
    Cancelled,
    ExplainError,
    ImageLoadError,
    MethodNotApplicableError,
    UnknownClassError,
    UnknownLayerError,
    UnknownMethodError,
    UnknownModelError,
    WeightsMismatchError,
    WeightsUnavailableError,
)
from .explanation import RELATIVE, Explanation, explain, predict_top, top_predictions
from .io import MAX_IMAGE_MB, SUPPORTED_EXTENSIONS, load_image
from .methods import DEFAULT_METHOD, Method, Param, TITLES, all_methods, get_method, method_names
from .methods import register as register_method, unregister as unregister_method
from . import methods  # submodule, part of the public API
from .model import INPUT_LAYER, Capture, Model
from .progress import CancelCheck, Progress
from .preprocess import FITS, POLARITIES, Preprocess, read_polarity
from .registry import (
    DEFAULT_MODEL,
    download_weights,
    get_spec,
    ModelInfo,
    checkpoint_dir,
    imagenet_categories,
    list_models,
    load_model,
    model_names,
    weights_file,
)
from .render import COLORMAPS, NORMALIZATIONS, OVERLAY_MODES
from .samples import SAMPLES_DIR, list_samples, sample_kind, sample_title
from .families import COLOUR_SAMPLE, GREY_SAMPLE, Architecture, Built, ModelSpec, register_architecture, register_model
from . import custom, metrics, offline, render, sanity, teach  # submodules, part of the public API
from .custom import build_custom, custom_architectures, read_labels, read_state_dict
from .metrics import FaithfulnessResult, MethodComparison, compare_methods, deletion_insertion, plain_reading
from .sanity import SanityResult, cascading_randomisation
from .teach import TEACH_CAM, TEACH_GRADCAM
from .teach import Walkthrough, walkthrough
from .sources import AuditError, ZipLimits
from .audit import Audit, Finding, audit, load as load_audit
from . import demo  # bundled audit sets: scikit-learn digits, the shortcut demo

__all__ = [
    "COLORMAPS", "DEFAULT_MODEL", "FITS", "INPUT_LAYER", "METHODS", "NORMALIZATIONS", "TITLES",
    "Cancelled", "Capture", "ExplainError", "Explanation", "ImageLoadError", "MethodNotApplicableError",
    "Model", "ModelInfo", "Preprocess", "UnknownClassError", "UnknownLayerError", "UnknownMethodError",
    "UnknownModelError", "WeightsMismatchError", "WeightsUnavailableError", "checkpoint_dir", "explain",
    "get_method", "imagenet_categories", "list_models", "load_image", "load_model", "model_names",
    "weights_file", "custom", "metrics", "render", "sanity", "teach", "build_custom", "custom_architectures",
    "read_labels", "read_state_dict", "FaithfulnessResult", "compare_methods", "deletion_insertion",
    "plain_reading", "SanityResult", "cascading_randomisation", "Walkthrough", "walkthrough",
    "SUPPORTED_EXTENSIONS", "MAX_IMAGE_MB", "SAMPLES_DIR", "list_samples", "sample_title",
    "DEFAULT_METHOD", "Method", "Param", "all_methods", "method_names", "methods", "predict_top",
    "top_predictions", "MethodComparison", "CancelCheck", "Progress", "sample_kind", "COLOUR_SAMPLE",
    "GREY_SAMPLE", "Architecture", "Built", "ModelSpec", "register_architecture", "register_model", "get_spec",
    "register_method", "unregister_method", "TEACH_CAM", "TEACH_GRADCAM",
    "Audit", "AuditError", "Finding", "ZipLimits", "audit", "load_audit", "demo",
    "RELATIVE", "POLARITIES", "read_polarity", "OVERLAY_MODES", "download_weights", "offline",
]


def __getattr__(name: str) -> object:
    # ``explain.METHODS``: every registered method's name, computed on access (plug-ins included).
    if name == "METHODS":
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
