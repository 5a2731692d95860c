"""Compare classes: one image, several classes, one batched explanation, one grid of overlays."""

from __future__ import annotations

import streamlit as st

import explain
from ui import compute, course, page, pictures, report, resources, share, state, text, widgets

COLUMNS = 5
MAX_CLASSES = 10
SHARED_WHY = (
    "**Shared scale** puts every map on one colour scale, so a class the model sees little evidence "
    "for stays dim; **per map** stretches each map to its own maximum, which makes weak evidence look "
    "as strong as the winner's."
)


@st.fragment
def class_grid(m: explain.Model, sel: state.Selection) -> None:
    """The class picker and the grid. A fragment: picking classes reruns this, not the sidebar."""
    with page.guard("comparing classes"):
        _class_grid(m, sel)


def _class_grid(m: explain.Model, sel: state.Selection) -> None:
    ss = st.session_state
    categories = m.categories
    picker, buttons = st.columns([4, 1], vertical_alignment="bottom")
    picker.multiselect(
        "Classes", range(m.num_classes), key=state.COMPARE_CLASSES, max_selections=MAX_CLASSES,
        format_func=text.class_labels(categories).__getitem__, placeholder="Type to search classes…",
    )
    lesson = widgets.course_classes(m)
    if lesson:
        buttons.button(
            "Lesson classes", on_click=widgets.on_change_set(state.COMPARE_CLASSES, lambda: list(lesson)),
            help="The lesson's nine classes, with its ids: " + ", ".join(widgets.COURSE_CLASSES), width="stretch",
        )
    for wrong, label, name, right in course.corrections(m):
        if wrong in ss[state.COMPARE_CLASSES]:
            note, fix = st.columns([4, 1], vertical_alignment="center")
            note.caption(text.md_escape(course.correction_text(wrong, label, name, right)))
            if right is not None:
                fix.button(
                    f"Use {right}", key=f"cx.compare.fix.{wrong}", width="stretch",
                    on_click=widgets.on_change_set(
                        state.COMPARE_CLASSES,
                        lambda w=wrong, r=right: course.replace_in(list(st.session_state[state.COMPARE_CLASSES]), w, r),
                    ),
                    help=f"Replace {wrong} ({name}) by {right} ({m.categories[right]}).",
                )
    shared = bool(ss.get(state.SHARED_SCALE))
    info = explain.get_method(sel.method)
    top = sel.predictions[0][0] if sel.predictions else None
    against = st.toggle(
        "Each against the top class", key=state.AGAINST_TOP, disabled=not info.supports_contrast or top is None,
        help=("Each map shows why the model says that class *rather than* its top guess "
              f"({categories[top] if top is not None else '—'}): the map of the difference of the two scores."
              if info.supports_contrast else
              f"{info.title} cannot explain one class rather than another; pick a gradient method or CAM."),
    )
    contrast = top if against and info.supports_contrast else None

    classes = list(ss[state.COMPARE_CLASSES])
    share.publish_page({share.CLASSES: classes})
    if contrast is not None:
        if contrast in classes:
            st.caption(text.md_escape(f"{text.class_label(categories, contrast)} is the top class itself, so it is left out."))
        classes = [c for c in classes if c != contrast]
    if not classes:
        st.info("Pick at least one class above" + (" other than the top class." if contrast is not None else "."))
        st.stop()
    try:
        r = compute.run_explain(m, sel, classes, contrast=contrast)
    except explain.MethodNotApplicableError as err:
        st.warning(text.md_escape(err))
        st.stop()
    tiles = compute.overlays(r, sel, normalize="shared" if shared else "per_map")
    rather = f" rather than {categories[contrast]}" if contrast is not None else ""
    # A map that is zero everywhere says so under its tile (and in a notice below), not as a flat colour alone.
    captions = [f"{text.class_label(categories, cls)} — {text.percent(r.prob(cls))}{rather}"
                + (" — no part raises this score" if r.empty(i) else "") for i, cls in enumerate(r.targets)]
    for row in range(0, len(tiles), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, tile, caption in zip(cols, tiles[row : row + COLUMNS], captions[row : row + COLUMNS]):
            col.image(pictures.png(tile), caption=text.md_escape(caption), width="stretch", output_format="PNG")
    compute.show_notices(r)
    extra = {
        "classes": [{"index": c, "name": categories[c], "probability": r.prob(c)} for c in r.targets],
        "scale": "shared" if shared else "per_map",
        "rather_than": None if contrast is None else {"index": contrast, "name": categories[contrast]},
    }
    report.download_button(st.container(), "compare_classes", m, sel, tiles, captions, columns=COLUMNS, extra=extra)


with page.guard("comparing classes"):
    sel = page.need_selection()
    m = resources.get_model(sel.model_name)
    ss = st.session_state
    st.header("Compare classes")
    st.caption(f"Which parts of the same picture speak for each class? {text.md_escape(explain.get_method(sel.method).title)} "
               f"at layer {text.md_escape(sel.layer)}.")

    # Default: the top-5 of this image, again whenever the model or the image change.
    context = (m.name, sel.image_digest)
    chosen = ss.get(state.COMPARE_CLASSES)
    if ss.get(state.COMPARE_CONTEXT) != context or not isinstance(chosen, list) or any(
        not isinstance(c, int) or not 0 <= c < m.num_classes for c in chosen
    ):
        ss[state.COMPARE_CLASSES] = [i for i, _n, _p in sel.predictions]
        ss[state.COMPARE_CONTEXT] = context
    # Mirrors the sidebar's colour-scale radio both ways, so it reruns the whole app (not the fragment).
    ss[state.SHARED_SCALE] = sel.normalize == "shared"
    st.toggle(
        "Shared scale", key=state.SHARED_SCALE,
        on_change=widgets.on_change_set(
            state.NORMALIZE, lambda: "shared" if st.session_state[state.SHARED_SCALE] else "per_map"
        ),
    )
    st.caption(SHARED_WHY)
    class_grid(m, sel)
