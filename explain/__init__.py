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
from .explanation import Explanation, explain
from .io import MAX_IMAGE_MB, SUPPORTED_EXTENSIONS, load_image
from .methods import METHODS, TITLES, get_method
from .model import INPUT_LAYER, Capture, Model
from .preprocess import FITS, Preprocess
from .registry import (
    DEFAULT_MODEL,
    ModelInfo,
    checkpoint_dir,
    imagenet_categories,
    list_models,
    load_model,
    model_names,
    weights_file,
)
from .render import COLORMAPS, NORMALIZATIONS
from .samples import SAMPLES_DIR, list_samples, sample_title
from . import custom, metrics, sanity, teach  # noqa: E402  (submodules, part of the public API)
from .custom import build_custom, custom_architectures, read_labels, read_state_dict
from .metrics import FaithfulnessResult, compare_methods, deletion_insertion, plain_reading
from .sanity import SanityResult, cascading_randomisation
from .teach import Walkthrough, walkthrough

__all__ = [
    "COLORMAPS", "DEFAULT_MODEL", "FITS", "INPUT_LAYER", "METHODS", "NORMALIZATIONS", "TITLES",
    "Cancelled", "Capture", "ExplainError", "Explanation", "ImageLoadError", "MethodNotApplicableError",
    "Model", "ModelInfo", "Preprocess", "UnknownClassError", "UnknownLayerError", "UnknownMethodError",
    "UnknownModelError", "WeightsMismatchError", "WeightsUnavailableError", "checkpoint_dir", "explain",
    "get_method", "imagenet_categories", "list_models", "load_image", "load_model", "model_names",
    "weights_file", "custom", "metrics", "sanity", "teach", "build_custom", "custom_architectures",
    "read_labels", "read_state_dict", "FaithfulnessResult", "compare_methods", "deletion_insertion",
    "plain_reading", "SanityResult", "cascading_randomisation", "Walkthrough", "walkthrough",
    "SUPPORTED_EXTENSIONS", "MAX_IMAGE_MB", "SAMPLES_DIR", "list_samples", "sample_title",
]
