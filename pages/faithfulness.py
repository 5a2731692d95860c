"""Faithfulness: do the maps point at what the model actually uses?

Two checks on the sidebar's model, image and class, each started by a button because each costs
many forward passes:

* deletion and insertion curves (Petsiuk et al., "RISE", 2018) for several methods against a
  random pixel order (``explain.metrics.compare_methods``);
* the model-randomisation sanity check (Adebayo et al., 2018) for the sidebar's method
  (``explain.sanity.cascading_randomisation``; it works on copies, never on the shared model).

Results are kept in session state by everything they depend on, so a display change reruns the
page without recomputing, and they are written only once complete: a run interrupted by a
control change (Streamlit stops it at the next progress redraw) leaves nothing half-made behind.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st
from matplotlib.figure import Figure  # no pyplot: thread-safe under a multi-user server

import explain
from explain import FaithfulnessResult, MethodComparison, SanityResult, plain_reading
from ui import compute, page, pictures, resources, state, text

from ui.state import FAITH_METHODS, FAITH_REQUEST, FAITH_RUNS, FAITH_STEPS, SANITY_REQUEST, SANITY_RUNS

DEFAULT_METHODS = explain.methods.DEFAULT_FAITHFULNESS
STEP_CHOICES = (8, 16, 32)
DEFAULT_STEPS = 16  # 17 images per curve, 34 per method: smooth enough, a few seconds on a CPU
READING_FRACTION = 0.1  # the plain-language sentence: "with the top 10% of pixels removed …"
SANITY_STAGES = 3
KEEP_RUNS = 6  # contexts remembered per check (a user flipping between classes keeps their results)
COLORS = ("#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#be185d")
RANDOM_COLOR = "#6b7280"

CURVES_WHY = """
**How to read this.** A map claims that some pixels matter more than others. We take it at its word:

- **Deletion** — remove the pixels the map ranks highest first (they take the picture's mean colour)
  and watch the model's confidence in the class. If the map found the evidence, confidence
  **falls fast**: a *small* area under the curve (AUC) is good.
- **Insertion** — start from a heavily blurred picture and put the real pixels back, highest first.
  If the map is right, confidence **rises fast**: a *large* area is good.
- **Random order** is the yardstick: a map that does no better than random is not telling you
  where the evidence is.

These curves test the map against the model's own behaviour, not against where a person would look.
"""

SANITY_WHY = """
**Why this check?** If a map explains *what the model learned*, it must change when what the model
learned is destroyed. We replace the weights of the model's top layers by random numbers — on a
**copy**; the model everyone uses is never touched — recompute the map, and compare it with the
original one. A map that barely changes (rank correlation close to 1) shows something about the
picture (edges, contrast), not about the model.
"""


def _store(key: str, run: tuple, value: object) -> None:
    """Remember ``value`` for ``run`` under ``key``, keeping only the last few runs."""
    runs = dict(st.session_state.get(key) or {})
    runs.pop(run, None)
    runs[run] = value
    while len(runs) > KEEP_RUNS:
        runs.pop(next(iter(runs)))
    st.session_state[key] = runs


def _request(key: str, run: tuple) -> None:
    """Button callback: remember which run was asked for.

    A callback rather than the button's return value: the request survives a rerun that happens
    before the page is reached (``ui.page.enter``) and a run interrupted by a display
    change, which then simply starts again. It names its context, so a changed context drops it.
    """
    st.session_state[key] = run


def _requested(key: str, run: tuple) -> bool:
    """True if ``run`` was asked for; a request for another context is forgotten."""
    if st.session_state.get(key) == run:
        return True
    st.session_state.pop(key, None)
    return False


def _recall(key: str, run: tuple) -> object | None:
    """The stored result of ``run`` under ``key``, or ``None``."""
    runs = st.session_state.get(key)
    return runs.get(run) if isinstance(runs, dict) else None


def publish(context: tuple[str, str, int, str], rows: Sequence[MethodComparison]) -> None:
    """Publish the results shown now (:class:`ui.state.FaithfulnessShown`: what the report reads)."""
    st.session_state[state.FAITH_RESULTS] = state.FaithfulnessShown(
        context=context, results={row.method: row.result for row in rows if row.result is not None},
    )


# ---- deletion and insertion ----------------------------------------------------------------------


def curves_figure(rows: Sequence[MethodComparison]) -> Figure:
    """Deletion (left) and insertion (right) curves of every row, random order dashed grey.

    Only our own method titles go into the figure: matplotlib would read ``$…$`` in a user
    string (a class name) as mathematics.
    """
    fig = Figure(figsize=(11, 4.6), dpi=110, layout="constrained")
    ax_del, ax_ins = fig.subplots(1, 2, sharey=True)
    colour = iter(COLORS)
    for row in rows:
        res: FaithfulnessResult = row.result
        x = res.fractions * 100.0
        if row.is_random:
            style = {"color": RANDOM_COLOR, "linestyle": "--", "linewidth": 2.0}
        else:
            style = {"color": next(colour, "#111827"), "linewidth": 2.4}
        ax_del.plot(x, res.deletion, label=row.title, **style)
        ax_ins.plot(x, res.insertion, **style)
    for ax, title, xlabel, hint in (
        (ax_del, "Deletion", "Pixels removed, most important first (%)", "lower area is better"),
        (ax_ins, "Insertion", "Pixels put back, most important first (%)", "higher area is better"),
    ):
        ax.set_title(f"{title} — {hint}", fontsize=13)
        ax.set_xlabel(xlabel, fontsize=11.5)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=10.5)
    ax_del.set_ylabel("Model's confidence in the class", fontsize=11.5)
    # One legend under both plots: inside either it would hide the curves it names.
    fig.legend(loc="outside lower center", ncols=min(len(rows), 5), fontsize=11, frameon=False)
    return fig


def curves_table(rows: Sequence[MethodComparison], fraction: float = READING_FRACTION) -> pd.DataFrame:
    """One row per method that ran: the two areas and the confidence after the top ``fraction`` went."""
    share = f"{fraction * 100:g}%"
    return pd.DataFrame(
        {
            "Method": [row.title for row in rows],
            "Deletion AUC (lower is better)": [row.result.deletion_auc for row in rows],
            "Insertion AUC (higher is better)": [row.result.insertion_auc for row in rows],
            f"Confidence with top {share} removed": [row.result.prob_after_removing(fraction) for row in rows],
        }
    )


def verdict_lines(done: Sequence[MethodComparison]) -> list[str]:
    """Which method did best at each curve, and which did not beat the random order (plain text)."""
    methods = [r for r in done if not r.is_random]
    rand = next((r for r in done if r.is_random), None)
    if not methods:
        return []
    best_del = min(methods, key=lambda r: r.deletion_auc)
    best_ins = max(methods, key=lambda r: r.insertion_auc)
    lines = [f"Best at deletion: {best_del.title}. Best at insertion: {best_ins.title}."]
    if rand is not None:
        worse = [r.title for r in methods
                 if r.deletion_auc >= rand.deletion_auc and r.insertion_auc <= rand.insertion_auc]
        if worse:
            lines.append(f"No better than a random order at either curve: {', '.join(worse)}; "
                         "its map does not point at what the model uses here.")
    return lines


def deletion_insertion_section(m: explain.Model, sel: state.Selection, class_name: str) -> None:
    """Method picker, run button, then the table, the curves and one sentence per method."""
    ss = st.session_state
    st.subheader("Deletion and insertion curves")
    st.markdown(CURVES_WHY)
    ss.setdefault(FAITH_METHODS, list(DEFAULT_METHODS))
    ss.setdefault(FAITH_STEPS, DEFAULT_STEPS)
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    methods = left.multiselect(
        "Methods to compare (a random order is always added as the yardstick)", explain.method_names(),
        key=FAITH_METHODS, format_func=text.method_title,
        help="Score-CAM first runs one masked forward pass per channel of the layer: slow on a CPU.",
    )
    steps = right.select_slider("Steps per curve", STEP_CHOICES, key=FAITH_STEPS,
                                help="More steps: smoother curves, more forward passes.")
    if not methods:
        st.info("Pick at least one method above.")
        return
    context = (m.name, sel.image_digest, sel.target, sel.layer)
    run = (*context, tuple(methods), int(steps), sel.fit, sel.polarity)
    rows = _recall(FAITH_RUNS, run)
    if rows is None:
        images = (int(steps) + 1) * 2 * (len(methods) + 1)
        slow = "".join(f" {explain.get_method(n).title} adds extra passes of the network (its default options)."
                       for n in methods if explain.get_method(n).slow)
        st.caption(f"This runs the model on about {images} altered pictures.{slow}")
        if not _requested(FAITH_REQUEST, run):
            st.button("Compute deletion & insertion curves", type="primary", icon=":material/play_arrow:",
                      on_click=_request, args=(FAITH_REQUEST, run))
            return
        bar = st.progress(0.0, text="Computing the maps…")
        beat = st.empty()
        try:
            rows = explain.metrics.compare_methods(
                m, sel.image, sel.target, methods, layer=sel.layer, steps=int(steps), fit=sel.fit, polarity=sel.polarity,
                progress=compute.progress_callback(bar, "Deletion & insertion: {done} of {total} pictures"),
                cancel=compute.heartbeat(beat, "Computing the maps"),
            )
        except Exception:
            # A real failure: forget the request, or every rerun would try again. (Streamlit's
            # interruption is no Exception: then the request stays and the next run starts over.)
            st.session_state.pop(FAITH_REQUEST, None)
            raise
        bar.empty()
        beat.empty()
        # Stored only now, complete: an interrupted run above leaves nothing behind.
        _store(FAITH_RUNS, run, rows)
        st.session_state.pop(FAITH_REQUEST, None)
    publish(context, rows)

    for row in rows:
        if row.error:
            st.warning(text.md_escape(f"{row.title} is not applicable here: {row.error}"))
    done = [row for row in rows if row.result is not None]
    if not [r for r in done if not r.is_random]:
        return
    st.dataframe(
        curves_table(done), hide_index=True, width="stretch",
        column_config={
            "Deletion AUC (lower is better)": st.column_config.NumberColumn(format="%.3f"),
            "Insertion AUC (higher is better)": st.column_config.NumberColumn(format="%.3f"),
            f"Confidence with top {READING_FRACTION * 100:g}% removed": st.column_config.ProgressColumn(
                format="percent", min_value=0.0, max_value=1.0),
        },
    )
    for line in verdict_lines(done):
        st.markdown(f"**{text.md_escape(line)}**")
    st.pyplot(curves_figure(done), width="stretch")
    st.markdown("\n".join(
        f"- {text.md_escape(plain_reading(row.title, class_name, row.result, READING_FRACTION))}"
        for row in done
    ))
    with st.expander("The maps being tested"):
        view = m.preprocess.view(sel.image, sel.fit)
        with_heat = [row for row in done if row.heat is not None]
        for col, row in zip(st.columns(max(len(with_heat), 4)), with_heat):
            pictures.show(col, pictures.overlay(view, row.heat, sel), caption=row.title)


# ---- sanity check --------------------------------------------------------------------------------


def sanity_table(result: SanityResult) -> pd.DataFrame:
    """The trained model, then one row per randomisation stage."""
    stages = result.randomised
    return pd.DataFrame(
        {
            "Randomised": ["none (trained model)"] + [s.label for s in stages],
            "Layers": [0] + [len(s.layers) for s in stages],
            "Rank correlation": [1.0] + [s.spearman for s in stages],
            "SSIM": [1.0] + [s.ssim for s in stages],
            "Confidence": [result.original_prob, *result.stage_probs],
        }
    )


def sanity_section(m: explain.Model, sel: state.Selection) -> None:
    """Run button, then the verdict, the correlations and the maps side by side."""
    title = explain.get_method(sel.method).title
    st.subheader("Sanity check: randomise the model")
    st.markdown(SANITY_WHY)
    st.caption(f"Checks **{text.md_escape(title)}** (the method chosen in the sidebar) at layer "
               f"{text.md_escape(sel.layer)}.")
    try:
        explain.get_method(sel.method).check(m, sel.layer)
    except explain.MethodNotApplicableError as err:
        st.warning(text.md_escape(err))
        return
    run = (m.name, sel.image_digest, sel.target, sel.layer, sel.method, sel.fit)
    result = _recall(SANITY_RUNS, run)
    if not isinstance(result, SanityResult):
        if explain.get_method(sel.method).slow:
            st.caption(f"{text.method_title(sel.method)} runs extra forward passes for every stage: minutes on a CPU.")
        if not _requested(SANITY_REQUEST, run):
            st.button("Run the sanity check", type="primary", icon=":material/shuffle:",
                      on_click=_request, args=(SANITY_REQUEST, run))
            return
        bar = st.progress(0.0, text="Randomising the model's top layers (on a copy)…")
        beat = st.empty()
        try:
            result = explain.sanity.cascading_randomisation(
                m, sel.image, sel.target, method=sel.method, layer=sel.layer, steps=SANITY_STAGES, fit=sel.fit,
                progress=compute.progress_callback(bar, "Sanity check: {done} of {total} randomised models done"),
                cancel=compute.heartbeat(beat, "Recomputing the map"),
            )
        except Exception:
            st.session_state.pop(SANITY_REQUEST, None)  # as for the curves: no endless retries
            raise
        bar.empty()
        beat.empty()
        _store(SANITY_RUNS, run, result)  # complete results only (see the module docstring)
        st.session_state.pop(SANITY_REQUEST, None)

    verdict = text.md_escape(result.verdict())
    if result.passed:
        st.success(verdict, icon=":material/check_circle:")
    else:
        st.warning(verdict + " Do not rely on its maps for this model.", icon=":material/warning:")
    st.dataframe(
        sanity_table(result), hide_index=True, width="stretch",
        column_config={
            "Rank correlation": st.column_config.NumberColumn(
                format="%.2f", help="Spearman rank correlation with the trained model's map: 1 same pixel order, 0 unrelated."),
            "SSIM": st.column_config.NumberColumn(
                format="%.2f", help="Structural similarity of the two heatmaps: 1 identical."),
            "Confidence": st.column_config.NumberColumn(
                format="percent", help="That model's confidence in the class (a randomised model has none left)."),
        },
    )
    st.caption(f"Rank correlation 1: the same pixels in the same order; 0: unrelated. At or below "
               f"{result.threshold:.1f} the map counts as changed.")
    view = m.preprocess.view(sel.image, sel.fit)
    tiles = [("Trained model", result.original)] + [
        (f"{s.label} randomised · correlation {s.spearman:.2f}", s.heat) for s in result.randomised
    ]
    for col, (caption, heat) in zip(st.columns(len(tiles)), tiles):
        pictures.show(col, pictures.overlay(view, np.asarray(heat), sel), caption=text.md_escape(caption))


# Each check is a fragment: its own settings and button rerun that check alone, not the sidebar
# and the other check. Each has its own guard, so that a failure in one leaves the other usable.


@st.fragment
def curves_panel(m: explain.Model, sel: state.Selection, class_name: str) -> None:
    """:func:`deletion_insertion_section` as a fragment with its own error guard."""
    with page.guard("computing the deletion and insertion curves"):
        deletion_insertion_section(m, sel, class_name)


@st.fragment
def sanity_panel(m: explain.Model, sel: state.Selection) -> None:
    """:func:`sanity_section` as a fragment with its own error guard."""
    with page.guard("running the sanity check"):
        sanity_section(m, sel)


with page.guard("checking the maps' faithfulness"):
    sel = page.need_selection()
    m = resources.get_model(sel.model_name)
    class_name = m.categories[sel.target]
    st.header("Faithfulness: can we trust the map?")
    st.caption(
        f"For {text.md_escape(text.class_label(m.categories, sel.target))} on "
        f"{text.md_escape(sel.image_label)}, model {text.md_escape(m.name)}, layer {text.md_escape(sel.layer)}. "
        "Change them in the sidebar."
    )
    curves_panel(m, sel, class_name)
    st.divider()
    sanity_panel(m, sel)
