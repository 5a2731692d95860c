"""Your model: explain your own trained weights (a ``state_dict``) with a torchvision architecture or LeNet.

The model built here belongs to this session only (``ui.resources.UploadedModel`` in session
state, never a shared cache): the sidebar's model picker offers it and every page can explain
with it. Uploaded files are only ever read as tensors (``explain.read_state_dict``), never
unpickled as code.
"""

from __future__ import annotations

import hashlib
import io  # Streamlit's uploaded files are BytesIO objects
import logging
import math

import streamlit as st


import explain
from explain import custom
from ui import page, resources, state, text

# server.maxUploadSize in .streamlit/config.toml must be at least this (the server refuses bigger
# uploads whatever the widget says): VGG-19-BN's weights are 548 MB, RegNetY-32GF's 554 MB.
MAX_WEIGHTS_MB = 600
MAX_SHOWN_CLASSES = 12
INTRO = (
    "Load the weights you trained yourself — a `state_dict` saved with `torch.save(model.state_dict(), …)` "
    "or as `.safetensors` — into a torchvision architecture or the built-in LeNet-style network. "
    "The number of classes (and whether the model takes greyscale pictures) is read from the weights. "
    "Files are read as tensors only: nothing in them is ever run as code."
)
_LOG = logging.getLogger("cam_explorer")


def arch_label(arch: str) -> str:
    """Picker text of an architecture."""
    if arch == custom.LENET:
        return f"{arch} (built-in LeNet-style CNN, 32×32)"
    if arch == MNIST_LENET:
        return f"{arch} (the MNIST lesson's LeNet, 28×28, .ckpt from PyTorch Lightning too)"
    return arch


MNIST_LENET = "mnist_lenet"


def parse_floats(text: str, what: str) -> tuple[float, ...] | None:
    """``"0.5, 0.4"`` → ``(0.5, 0.4)``; empty → ``None``; raise ExplainError saying what is wrong."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise explain.ExplainError(
            f"The {what} must be numbers separated by commas (e.g. 0.485, 0.456, 0.406), not {text!r}."
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise explain.ExplainError(f"The {what} must be finite numbers.")
    return values


def build(
    arch: str, weights: io.BytesIO, labels_file: io.BytesIO | None, size: int, mean_text: str, std_text: str,
    polarity: str = "auto",
) -> resources.UploadedModel:
    """Read the uploads and build the model (raises ExplainError with what to fix).

    ``polarity``: how the training pictures were drawn; ``"auto"`` takes the file's own setting
    (a .safetensors ``invert`` hint), else the architecture's; a choice here overrides the file.
    """
    data = weights.getvalue()
    labels_data = labels_file.getvalue() if labels_file is not None else b""
    options = repr((arch, size, mean_text, std_text, polarity, labels_file.name if labels_file is not None else ""))
    digest = hashlib.blake2b(data + b"\0" + labels_data + b"\0" + options.encode(), digest_size=12).hexdigest()
    mine = resources.uploaded_model()
    if mine is not None and mine.digest == digest:
        return mine  # the same files and options: nothing to rebuild
    state_dict = explain.read_state_dict(data, weights.name)
    # A .safetensors file may carry its own preprocessing and class names (the embedded digit
    # weights do); they fill in whatever the user left empty.
    hints = custom.read_metadata(data) if weights.name.lower().endswith(".safetensors") else {}
    labels = explain.read_labels(labels_data, labels_file.name) if labels_file is not None else None
    if labels is None:
        labels = hints.get("categories")
    mean = parse_floats(mean_text, "mean") or hints.get("mean")
    std = parse_floats(std_text, "std") or hints.get("std")
    if polarity == "auto" and hints.get("invert"):
        polarity = "light_on_dark"  # the file's network was trained on inverted (light-on-dark) input
    try:
        model = explain.build_custom(
            arch, state_dict, source=weights.name, labels=labels, input_size=size or hints.get("input_size"),
            mean=mean, std=std, polarity=polarity, name=f"uploaded:{weights.name}:{digest[:8]}",
        )
    except explain.WeightsMismatchError:
        raise
    except explain.ExplainError:
        if labels_file is None and labels is not None:  # the file's own names did not fit: number them
            model = explain.build_custom(
                arch, state_dict, source=weights.name, input_size=size or hints.get("input_size"), mean=mean,
                std=std, polarity=polarity, name=f"uploaded:{weights.name}:{digest[:8]}",
            )
        else:
            raise
    return resources.UploadedModel(model, arch, weights.name, labels_file.name if labels_file is not None else "", digest)


def request_build() -> None:
    """Button callback: build on this run (a callback, so a rerun before the page keeps the request)."""
    st.session_state[state.OWN_BUILD] = True


def use_model(name: str) -> None:
    """Button callback: select ``name`` in the sidebar's model picker (runs before it is drawn)."""
    st.session_state[state.MODEL] = name


def forget_model() -> None:
    """Button callback: drop this session's model and go back to the default one."""
    st.session_state.pop(state.UPLOADED, None)
    st.session_state[state.MODEL] = explain.DEFAULT_MODEL


def summary(mine: resources.UploadedModel) -> None:
    """What was built: architecture, classes, input, layers; and the buttons to use or leave it."""
    m = mine.model
    pre = m.preprocess
    colour = "greyscale" if pre.in_channels == 1 else f"{pre.in_channels} channels (colour)"
    if pre.in_channels == 1:
        colour += f", trained on {text.POLARITY_WORDS[pre.trained_polarity]} (pictures drawn the other way are inverted)"
    names = ", ".join(text.class_label(m.categories, i) for i in range(min(MAX_SHOWN_CLASSES, m.num_classes)))
    more = f" … and {m.num_classes - MAX_SHOWN_CLASSES} more" if m.num_classes > MAX_SHOWN_CLASSES else ""
    labels = mine.labels_name or "none (classes are numbered, or named by the weights file)"
    st.success(text.md_escape(f"Your model is loaded from {mine.weights_name}."))
    st.markdown(
        "\n".join([
            f"- **Architecture:** {text.md_escape(arch_label(mine.arch))}",
            f"- **Classes:** {m.num_classes} — {text.md_escape(names + more)}",
            f"- **Labels file:** {text.md_escape(labels)}",
            f"- **Input:** {pre.input_size}×{pre.input_size} pixels, {text.md_escape(colour)}",
            f"- **Layers to explain:** {len(m.layers())}, recommended {text.md_escape(m.default_layer)}",
        ])
    )
    in_use = st.session_state.get(state.MODEL) == mine.name
    c1, c2, c3 = st.columns(3)
    if in_use:
        c1.caption("In use on every page (see the model picker in the sidebar).")
    else:
        c1.button("Use my model", on_click=use_model, args=(mine.name,), type="primary", width="stretch")
    c2.button("Back to the default model", on_click=use_model, args=(explain.DEFAULT_MODEL,), width="stretch",
              disabled=not in_use)
    c3.button("Remove my model", on_click=forget_model, width="stretch",
              help="Forget these weights; load other ones below.")


with page.guard("loading your model"):
    page.enter()
    ss = st.session_state
    st.header("Your model")
    st.markdown(INTRO)
    mine = resources.uploaded_model()
    if mine is not None:
        summary(mine)
        st.divider()
        st.subheader("Load other weights")

    archs = explain.custom_architectures()
    if ss.get(state.OWN_ARCH) not in archs:
        ss[state.OWN_ARCH] = custom.LENET
    arch = st.selectbox("Architecture", archs, key=state.OWN_ARCH, format_func=arch_label,
                        help="The network your weights were trained with (its torchvision name).")
    # No type= filters: Streamlit enforces them before the script runs (its generic error box, on
    # every rerun); the engine's readers give a specific message for any file instead.
    weights = st.file_uploader(
        "Weights (state_dict)", key=state.OWN_WEIGHTS, max_upload_size=MAX_WEIGHTS_MB,
        help=f".pt/.pth from torch.save(model.state_dict(), …), a PyTorch Lightning .ckpt, or .safetensors, "
        f"up to {MAX_WEIGHTS_MB} MB (enough for VGG-19; not for ConvNeXt-Large, ViT-L/H or RegNetY-128GF).",
    )
    info = resources.model_infos().get(arch)
    if info is not None and info.size_mb > MAX_WEIGHTS_MB:
        st.warning(text.md_escape(
            f"{arch}'s ImageNet weights are about {info.size_mb:.0f} MB, more than the {MAX_WEIGHTS_MB} MB "
            "upload limit: a state_dict of this size cannot be uploaded."
        ))
    labels_file = st.file_uploader(
        "Class names (optional)", key=state.OWN_LABELS,
        help="One name per line, or a JSON list, in class-index order. Without it the classes are numbered.",
    )
    with st.expander("Input options (optional)"):
        ss.setdefault(state.OWN_SIZE, 0)
        size = st.number_input("Input size in pixels (0: the architecture's own)", min_value=0,
                               max_value=custom.MAX_INPUT_SIZE, step=1, key=state.OWN_SIZE)
        mean_text = st.text_input("Normalisation mean, one per channel (empty: the architecture's own)",
                                  key=state.OWN_MEAN, placeholder="0.485, 0.456, 0.406")
        std_text = st.text_input("Normalisation std, one per channel (empty: the architecture's own)",
                                 key=state.OWN_STD, placeholder="0.229, 0.224, 0.225")
        ss.setdefault(state.OWN_POLARITY, "auto")
        own_polarity = st.radio(
            "Greyscale models: the training pictures were drawn", explain.POLARITIES, key=state.OWN_POLARITY,
            horizontal=True, format_func=lambda p: "automatic (the file's or the architecture's own)" if p == "auto"
            else state.POLARITY_LABELS[p],
            help="MNIST draws light strokes on a dark background. Each picture's own polarity is read from it, "
            "and a picture drawn the other way round is inverted. A choice here overrides the file's setting.",
        )
        st.caption("Greyscale or colour is read from the weights (the first convolution's input channels); "
                   "pictures are converted to what the model takes. A .safetensors file's own settings are "
                   "used for anything left empty here.")

    st.button("Load my model", type="primary", disabled=weights is None, on_click=request_build,
              help="Upload the weights first." if weights is None else None)
    if ss.pop(state.OWN_BUILD, False) and weights is not None:
        try:
            with st.spinner("Building your model…"):
                built = build(arch, weights, labels_file, int(size or 0), mean_text, std_text, str(own_polarity))
        except explain.ExplainError as err:
            st.error(text.md_escape(f"{err} Check the architecture and the files, then try again."))
        except Exception as exc:  # noqa: BLE001 - e.g. an input size too small for the architecture
            _LOG.exception("Building an uploaded model failed")
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][: page.SHORT_MESSAGE]
            st.error(text.md_escape(
                f"These weights could not be used with {arch}: {first}. Check the architecture and the input size."
            ))
        else:
            ss[state.UPLOADED] = built
            ss[state.MODEL_REQUEST] = built.name  # the picker selects it on the next run
            st.rerun()
