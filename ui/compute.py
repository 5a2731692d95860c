"""The explain call of a page, with a spinner or a progress bar, and the engine callbacks that keep a
long computation interruptible."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

import explain
from ui import params
from ui.state import Selection
from ui.text import md_escape


def run_explain(
    m: explain.Model,
    sel: Selection,
    targets: Sequence[int],
    *,
    layer: str | None = None,
    method: str | None = None,
    where: st.delta_generator.DeltaGenerator | None = None,
    relative: bool = False,
    contrast: int | None = None,
) -> explain.Explanation:
    """``explain.explain`` for the selection, with a spinner, or a progress bar for slow methods.

    The method runs with the options the user chose for it (:func:`ui.params.options_for`);
    ``contrast`` explains each target rather than that class. Raises the engine's errors
    (``MethodNotApplicableError`` etc.) for the caller to show.
    """
    method = method or sel.method
    layer = layer or sel.layer
    where = where if where is not None else st.container()
    info = explain.get_method(method)
    title = info.title
    kw = {"options": params.options_for(method), "contrast": contrast, "polarity": sel.polarity, "relative": relative}
    if info.slow:
        bar = where.progress(0.0, text=f"{title}: running the extra forward passes…")

        def progress(done: int, total: int) -> None:
            # Redrawing the bar is also where a rerun requested by the user interrupts Score-CAM.
            bar.progress(min(1.0, done / max(total, 1)), text=f"{title}: {done} of {total} extra passes")

        r = explain.explain(m, sel.image, targets=list(targets), layer=layer, method=method, fit=sel.fit,
                            progress=progress, **kw)
        bar.empty()
        return r
    with where, st.spinner(f"Computing {title}…"):
        return explain.explain(m, sel.image, targets=list(targets), layer=layer, method=method, fit=sel.fit, **kw)


def overlays(r: explain.Explanation, sel: Selection, normalize: str | None = None, on: str | None = None) -> list:
    """The overlays of ``r`` with the selection's display settings (no forward pass): overlay mode and
    weights, and drawn on the original picture or the model's view as the sidebar says."""
    return r.overlays(
        normalize=normalize or sel.normalize,
        colormap=sel.colormap,
        alpha=sel.alpha,
        smooth=sel.smooth,
        contour=sel.contour,
        mode=sel.overlay_mode,
        heat_weight=sel.heat_weight,
        image_weight=sel.image_weight,
        on=on or ("original" if sel.on_original else "view"),
    )


NOT_APPLICABLE_HEIGHT = 230  # px: about one overlay tile in a four-column grid


def not_applicable(err: Exception) -> None:
    """A grid cell that says why a method does not apply, instead of an image."""
    with st.container(border=True, height=NOT_APPLICABLE_HEIGHT):
        st.markdown("**Not applicable here**")
        st.caption(md_escape(err))


def show_notices(r: explain.Explanation) -> None:
    """Each engine notice (a CPU fallback, a class whose map is zero everywhere) as an info box, and
    why a layer's maps say nothing when they cannot (a transformer layer only the class token leaves)."""
    for note in r.notices:
        st.info(md_escape(note))
    note = "" if r.method_info.on_input else _layer_note(r)
    if note:
        st.warning(md_escape(f"Layer {r.layer}: {note}."))


def _layer_note(r: explain.Explanation) -> str:
    from ui import resources

    try:
        return resources.get_model(r.model_name).layer_info(r.layer).note
    except explain.ExplainError:  # the model can no longer be loaded: no note then
        return ""


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
