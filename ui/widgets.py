"""The shared sidebar controls: model, image, class, method, layer and display settings.

``app.py`` calls :func:`sidebar` on every run, whatever the page, so every control keeps its
value when the user switches pages. Defaults are put into session state *before* a widget is
drawn (never passed as ``index=``/``value=``), which is what lets the code below reset a
control (the class when the image changes, the layer when the model changes, the model after a
failed load) without fighting the widget.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
from PIL import Image

import explain
from ui import charts, course, params, resources, share, state, text

from ui.state import DEFAULT_SAMPLE, DIGIT_SAMPLE, GALLERY_COLUMNS, SMOOTH_MAX, TOP_K  # noqa: F401 (re-exported)


def sidebar() -> state.Selection | None:
    """Draw all shared controls in the sidebar and publish this run's :class:`~ui.state.Selection`.

    On a session's first run the settings in its link (``?model=…&layer=…``) are put into
    session state just before each control is drawn (:mod:`ui.share`); after the controls,
    the link is brought up to date with them.
    """
    state.store(None)
    link = share.incoming()
    sb = st.sidebar
    notice_box, model_box, image_box, explain_box = sb.container(), sb.container(), sb.container(), sb.container()
    display_box = sb.expander("Display", expanded=True, icon=":material/palette:")
    with model_box:
        share.apply_model(link)
        m = model_picker()
    with image_box:
        share.apply_image(link, m)
        label, digest, image, fit = image_picker(m)
        polarity = polarity_picker(m)
    with display_box:
        share.apply_display(link)
        display = display_controls()
    with explain_box:
        class_box = st.container()
        share.apply_method(link)
        method = method_picker()
        options = params.method_options(method)
        share.apply_layer(link, m)
        layer = layer_picker(m)
        with class_box:
            share.apply_classes(link, m, digest)
            target, predictions = class_picker(m, image, digest, fit, layer, method, polarity)
    with notice_box:
        share.warn_ignored(link)
    sel = state.Selection(
        model_name=m.name,
        image=image,
        image_label=label,
        image_digest=digest,
        layer=layer,
        method=method,
        target=target,
        predictions=predictions,
        fit=fit,
        polarity=polarity,
        options=options,
        **display,
    )
    state.store(sel)
    share.publish(sel)
    return sel


# ---- model ------------------------------------------------------------------------------------


def model_label(info: explain.ModelInfo) -> str:
    """Picker text: ``"resnet50 (download ~98 MB)"``, ``"efficientnet_lite0 (embedded)"``."""
    if info.source == "embedded":
        extra = "embedded"
    elif info.cached:
        extra = "cached"
    else:
        extra = f"download ~{info.size_mb:.0f} MB"
    return f"{info.name} ({extra})"


def model_picker() -> explain.Model:
    """The model selectbox. A model that fails to load shows its error and the last good one stays.

    The session's uploaded model (the *Your model* page), if any, is offered after the others.
    """
    ss = st.session_state
    infos = resources.model_infos()
    mine = resources.uploaded_model()
    options = list(infos) + ([mine.name] if mine is not None else [])
    request = ss.pop(state.MODEL_REQUEST, None)
    if request in options:  # e.g. the Your model page selecting the model it just built
        ss[state.MODEL] = request
    ss.setdefault(state.MODEL, explain.DEFAULT_MODEL)
    requested = ss[state.MODEL]
    good = ss.get(state.MODEL_GOOD) or explain.DEFAULT_MODEL
    if good not in options:  # an uploaded model that was removed
        good = explain.DEFAULT_MODEL
    if requested not in options:
        requested = good
    picker_slot, status = st.container(), st.container()
    error = None
    try:
        m = resources.load_with_progress(requested, status)
    except explain.ExplainError as err:
        if requested == good:
            raise  # nothing to fall back to; the app's guard reports it
        error = f"{err} Still using {good}."
        m = resources.load_with_progress(good, status)
        requested = good
    ss[state.MODEL] = requested  # before the widget exists, so this also moves the picker back
    ss[state.MODEL_GOOD] = requested

    def label(name: str) -> str:
        if mine is not None and name == mine.name:
            return mine.label
        return model_label(infos[name])

    picker_slot.selectbox(
        "Model",
        options=options,
        format_func=label,
        key=state.MODEL,
        help="Embedded models work offline; torchvision models download their weights on first use. "
        "Use the Your model page to load your own weights.",
    )
    if error:
        status.error(text.md_escape(error))
    return m


# ---- image ------------------------------------------------------------------------------------


def image_picker(m: explain.Model) -> tuple[str, str, Image.Image | None, str]:
    """Sample / Upload / Camera. Returns (label, content digest, image or None, fit).

    A file that does not load shows the loader's message and the previous image stays.
    """
    ss = st.session_state
    ss.setdefault(state.IMAGE_SOURCE, state.IMAGE_SOURCES[0])
    source = st.segmented_control("Image", state.IMAGE_SOURCES, key=state.IMAGE_SOURCE, required=True,
                                  width="stretch", on_change=lambda: ss.pop(state.PINNED_IMAGE, None))
    data: bytes | None = None
    name = ""
    pinned = ss.get(state.PINNED_IMAGE)  # a picture opened from another page (the audit's gallery)
    if pinned is not None:
        name, data = pinned
        st.caption(f"Showing {text.md_escape(name)} from the audit; pick a source above to leave it.")
        source = "Pinned"
    elif source == "Sample":
        data, name = _sample_input(m)
    elif source == "Upload":
        up = _uploader()
        if up is not None:
            data, name = up.getvalue(), up.name
    else:
        shot = st.camera_input("Take a photo", key=state.CAMERA)
        if shot is not None:
            data, name = shot.getvalue(), "camera photo"
    label, digest, image = use_image_bytes(data, name, source)
    ss.setdefault(state.FIT, explain.FITS[0])
    fit = st.radio(
        "Fit to the square input", explain.FITS, key=state.FIT, horizontal=True,
        format_func=lambda f: state.FIT_LABELS.get(f, f),
        help="Squash keeps the whole picture (distorting it); centre crop keeps proportions but cuts the edges.",
    )
    return label, digest, image, fit


def _uploader():
    """The image file uploader.

    No ``type=`` filter: Streamlit enforces one *before* the script runs, so a file that slips past
    the browser's filter would end in Streamlit's generic exception box on every rerun. The loader
    sniffs the content instead and says exactly what is wrong with a file. The size limit is the
    loader's own (``explain.MAX_IMAGE_MB``; the server's is larger, for model weights): set here so
    that the browser says it, and checked again by the loader, which names it in its message.
    """
    return st.file_uploader(
        "Upload an image", key=state.UPLOAD, max_upload_size=explain.MAX_IMAGE_MB,
        help=f"JPEG, PNG, WebP, BMP, GIF or TIFF, up to {explain.MAX_IMAGE_MB} MB.",
    )


def _sample_input(m: explain.Model) -> tuple[bytes | None, str]:
    ss = st.session_state
    gallery = resources.sample_gallery()
    if not gallery:
        st.info("No sample images are installed; upload one instead.")
        return None, ""
    names = [fname for _t, fname, _i in gallery]
    titles = {fname: title for title, fname, _i in gallery}
    wanted = m.default_sample  # declared by the model's family (a digit for greyscale models)
    if ss.get(state.SAMPLE_CONTEXT) != m.name:
        # A new model gets a sample it can make sense of (digits for the digit model), unless the
        # current one already suits it: a picture of the same kind as the model's own sample.
        current = ss.get(state.SAMPLE)
        suits = current in names and explain.sample_kind(current) == explain.sample_kind(wanted)
        if not suits:
            ss[state.SAMPLE] = wanted if wanted in names else names[0]
        ss[state.SAMPLE_CONTEXT] = m.name
    if ss.get(state.SAMPLE) not in names:
        ss[state.SAMPLE] = names[0]
    chosen = st.selectbox("Sample", names, format_func=titles.get, key=state.SAMPLE,
                          label_visibility="collapsed")
    with st.expander("Sample gallery"):
        for row in range(0, len(gallery), GALLERY_COLUMNS):
            for col, (title, _f, thumb) in zip(st.columns(GALLERY_COLUMNS), gallery[row : row + GALLERY_COLUMNS]):
                col.image(thumb, caption=text.md_escape(title), width="stretch", output_format="PNG")
    return resources.read_sample(chosen), chosen


def use_image_bytes(data: bytes | None, name: str, source: str) -> tuple[str, str, Image.Image | None]:
    """Decode (cached by content) and remember the image; fall back to the last good one on error.

    This is the helper behind all three image sources; it draws its messages where it is called.
    Returns (label, digest, image or None).
    """
    ss = st.session_state
    previous = ss.get(state.IMAGE_GOOD)  # (label, digest, image) or None
    if data is None:
        if previous is not None and source != "Sample":
            st.caption(f"Nothing chosen yet: still showing {text.md_escape(previous[0])}.")
        return previous if previous is not None else ("", "", None)
    decoded = resources.decode_image(data, name or "the image")
    if decoded.image is None:
        keep = f" Still showing {previous[0]}." if previous is not None else ""
        st.error(text.md_escape(f"{decoded.error}{keep}"))
        return previous if previous is not None else ("", "", None)
    if decoded.image.info.get("cam_explorer_frames", 1) > 1:
        st.info("Animated image: using its first frame.")
    label = name or "image"
    if source == "Sample":
        label = {f: t for t, f, _i in resources.sample_gallery()}.get(name, name)
    current = (label, decoded.digest, decoded.image)
    ss[state.IMAGE_GOOD] = current
    return current


def polarity_picker(m: explain.Model) -> str:
    """Greyscale models only: is the picture drawn dark on light or light on dark (MNIST)? Default: read it."""
    ss = st.session_state
    ss.setdefault(state.POLARITY, "auto")
    if m.preprocess.in_channels != 1:
        return "auto"
    return st.radio(
        "Digits drawn", explain.POLARITIES, key=state.POLARITY, horizontal=True,
        format_func=lambda p: state.POLARITY_LABELS.get(p, p),
        help="Automatic reads it from the picture (its border against the rest). A picture drawn the other "
        "way round from the model's training pictures is inverted before the model sees it.",
    )


# ---- what to explain ------------------------------------------------------------------------------


def method_picker() -> str:
    """The method selectbox (Grad-CAM by default)."""
    ss = st.session_state
    ss.setdefault(state.METHOD, explain.DEFAULT_METHOD)
    name = st.selectbox(
        "Method", explain.method_names(), key=state.METHOD, format_func=text.method_title,
        help="How the map is made. " + " ".join(f"{m.title}: {m.summary}" for m in explain.all_methods()),
    )
    info = explain.get_method(name)
    # The one-line "what it shows", under the picker, for whoever does not know the method.
    st.caption(text.md_escape(info.summary + ("" if info.class_specific else " Not class-specific.")))
    return name


def layer_label(m: explain.Model, name: str, shape: tuple[int, ...]) -> str:
    """``"bn2 · 1280×7×7 (recommended)"``; a layer whose maps are zero by construction says so."""
    text = f"{name} · {'×'.join(str(s) for s in shape)}"
    if m.layer_info(name).note:
        return text + " (class token only: maps are zero)"
    return text + " (recommended)" if name == m.default_layer else text


def layer_picker(m: explain.Model) -> str:
    """The layer selectbox; back to the model's recommended layer whenever the model changes."""
    ss = st.session_state
    layers = m.layers()
    names = [n for n, _ in layers]
    if ss.get(state.LAYER_CONTEXT) != m.name or ss.get(state.LAYER) not in names:
        ss[state.LAYER] = m.default_layer
        ss[state.LAYER_CONTEXT] = m.name
    labels = {n: layer_label(m, n, s) for n, s in layers}
    return st.selectbox(
        "Layer", names, key=state.LAYER, format_func=labels.get,
        help="Later layers: coarse maps of whole objects. Earlier layers: finer maps of edges and textures.",
    )


def top_predictions(m: explain.Model, image: Image.Image, fit: str, layer: str, method: str,
                    polarity: str = "auto") -> list[tuple[int, str, float]]:
    """Top-5 ``(index, name, probability)`` from the (cached) capture the explanation will reuse."""
    with st.spinner("Running the model…"):
        return explain.predict_top(m, image, fit, layer=layer, method=method, k=TOP_K, polarity=polarity)


def class_picker(
    m: explain.Model, image: Image.Image | None, digest: str, fit: str, layer: str, method: str,
    polarity: str = "auto",
) -> tuple[int, list[tuple[int, str, float]]]:
    """Searchable class selectbox (top-1 by default, again whenever model or image change) + top-5 chart."""
    ss = st.session_state
    predictions = top_predictions(m, image, fit, layer, method, polarity) if image is not None else []
    context = (m.name, digest)
    valid = isinstance(ss.get(state.TARGET), int) and 0 <= ss[state.TARGET] < m.num_classes
    if (ss.get(state.TARGET_CONTEXT) != context or not valid) and predictions:
        ss[state.TARGET] = predictions[0][0]
        ss[state.TARGET_CONTEXT] = context
    elif not valid:
        ss[state.TARGET] = 0
    target = st.selectbox(
        "Class to explain", range(m.num_classes), key=state.TARGET,
        format_func=text.class_labels(m.categories).__getitem__,
        help="Type to search. Defaults to the model's top guess.",
    )
    course.lesson_picker(m, int(target))
    if predictions:
        st.caption("Top-5 predictions")
        charts.show_top5(predictions)
    return int(target), predictions


# The course's classes: the lesson's nine ImageNet ids as it uses them (see ui/course.py).
COURSE_CLASSES = tuple(f"{i} ({label})" for i, label in course.LESSON_CLASSES)


NO_CONTRAST = -1  # the contrast picker's "nothing" entry (a selectbox option must be hashable and sortable)


def contrast_picker(m: explain.Model, sel: state.Selection) -> int | None:
    """The optional "…rather than" class of the Explain page (runners-up first); ``None`` for none.

    Disabled, with a reason, for methods that cannot explain one class rather than another.
    """
    ss = st.session_state
    info = explain.get_method(sel.method)
    context = (m.name, sel.image_digest)
    value = ss.get(state.CONTRAST)
    if ss.get(state.CONTRAST_CONTEXT) != context and ss.get(state.CONTRAST_CONTEXT) is not None:
        value = NO_CONTRAST  # another model or picture: its runners-up differ
    if not isinstance(value, int) or not (value == NO_CONTRAST or 0 <= value < m.num_classes):
        value = NO_CONTRAST
    ss[state.CONTRAST] = value
    ss[state.CONTRAST_CONTEXT] = context
    runners = [i for i, _n, _p in sel.predictions if i != sel.target]
    others = [i for i in range(m.num_classes) if i != sel.target and i not in runners]
    options = [NO_CONTRAST, *runners, *others]
    if value not in options:  # the contrast class became the target
        ss[state.CONTRAST] = value = NO_CONTRAST

    labels = text.class_labels(m.categories)

    def label(i: int) -> str:
        if i == NO_CONTRAST:
            return "— (no contrast)"
        return labels[i] + (" · runner-up" if i in runners else "")

    why = (f"Explains why the model says {m.categories[sel.target]!r} rather than this class: the map of "
           "the difference of the two scores.")
    if not info.supports_contrast:
        why = f"{info.title} cannot explain one class rather than another; pick a gradient method or CAM."
    choice = st.selectbox("…rather than", options, key=state.CONTRAST, format_func=label,
                          disabled=not info.supports_contrast, help=why)
    return None if choice == NO_CONTRAST or not info.supports_contrast else int(choice)


def course_classes(m: explain.Model) -> list[int]:
    """The lesson's class ids, or [] when the model is not an ImageNet-1k classifier."""
    return course.lesson_ids(m)


def grid_default_layers(m: explain.Model, count: int = 3) -> list[str]:
    """One layer for each of the last ``count`` distinct map resolutions, plus the default.

    In forward order: e.g. 28×28, 14×14 and 7×7 for EfficientNet, so the grid shows how maps
    sharpen but lose meaning further back in the network. For each resolution the latest of the
    outermost modules is taken (a whole stage such as ``blocks.4`` or ``layer3``), not a layer
    deep inside one of its blocks.
    """
    layers = m.layers()
    best: dict[tuple[int, ...], tuple[int, str]] = {}  # grid -> (name depth, name)
    for name, shape in reversed(layers):
        grid = tuple(shape[1:])
        if grid not in best and len(best) == count:
            continue
        depth = name.count(".")
        if grid not in best or depth < best[grid][0]:
            best[grid] = (depth, name)
    names = {name for _d, name in best.values()} | {m.default_layer}
    return [n for n, _ in layers if n in names]


# ---- display ------------------------------------------------------------------------------------


def display_controls() -> dict[str, object]:
    """Colormap, opacity, smoothing, normalisation, contour: none of them re-runs the model."""
    ss = st.session_state
    for key, value in (
        (state.COLORMAP, explain.COLORMAPS[0]),
        (state.ALPHA, 0.5),
        (state.SMOOTH, 0),
        (state.NORMALIZE, explain.NORMALIZATIONS[0]),
        (state.CONTOUR, False),
        (state.OVERLAY_MODE, explain.OVERLAY_MODES[0]),
        (state.HEAT_WEIGHT, state.HEAT_WEIGHT_DEFAULT),
        (state.IMAGE_WEIGHT, state.IMAGE_WEIGHT_DEFAULT),
        (state.RAW_COLORMAP, ""),
        (state.ON_ORIGINAL, True),
    ):
        ss.setdefault(key, value)
    colormap = st.selectbox("Colormap", explain.COLORMAPS, key=state.COLORMAP,
                            help="cv2_jet is OpenCV's own JET (cv2.applyColorMap), as the OpenCV lessons draw.")
    raw_colormap = st.selectbox(
        "Raw map colormap", ("",) + explain.COLORMAPS, key=state.RAW_COLORMAP,
        format_func=lambda c: c or "as the overlay", help="The MNIST lesson draws the raw map in bwr.",
    )
    mode = st.segmented_control(
        "Overlay", explain.OVERLAY_MODES, key=state.OVERLAY_MODE, required=True,
        format_func=lambda k: state.OVERLAY_LABELS.get(k, k),
        help="Blend: opacity. Add: heat weight × heat + image weight × image, clipped (cv2.addWeighted). "
        "Multiply: the picture times the map, so only what the map highlights stays visible.",
    )
    mode = mode or explain.OVERLAY_MODES[0]
    # Drawn in every mode (disabled where they do not apply), so their values survive a mode switch.
    alpha = st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key=state.ALPHA, disabled=mode != "blend")
    w1, w2 = st.columns(2)
    heat_weight = w1.slider("Heat weight", 0.0, 2.0, step=0.05, key=state.HEAT_WEIGHT, disabled=mode != "add")
    image_weight = w2.slider("Image weight", 0.0, 2.0, step=0.05, key=state.IMAGE_WEIGHT, disabled=mode != "add")
    on_original = st.toggle("Draw on the original picture", key=state.ON_ORIGINAL,
                            help="Off: on the square picture the model saw (squashed or cropped).")
    smooth = st.slider("Smoothing (σ, pixels; 0 = off)", 0, SMOOTH_MAX, step=1, key=state.SMOOTH)
    normalize = st.radio(
        "Colour scale", explain.NORMALIZATIONS, key=state.NORMALIZE, horizontal=True,
        format_func=lambda k: state.NORMALIZE_LABELS.get(k, k),
        help="Per map: each map stretched from its own minimum to its maximum. Shared: one scale for all maps "
        "on a page. Max: each map divided by its maximum (as the lessons do).",
    )
    contour = st.checkbox("Outline the most important region", key=state.CONTOUR)
    return {"colormap": colormap, "alpha": float(alpha), "smooth": float(smooth), "normalize": normalize,
            "contour": bool(contour), "overlay_mode": mode, "heat_weight": float(heat_weight),
            "image_weight": float(image_weight), "raw_colormap": raw_colormap, "on_original": bool(on_original)}


def on_change_set(key: str, value_of: Callable[[], object]) -> Callable[[], None]:
    """A widget callback that copies a value into another session-state key (mirrored controls)."""

    def callback() -> None:
        st.session_state[key] = value_of()

    return callback
