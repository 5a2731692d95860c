"""Compare methods & layers: methods across, layers down, one overlay per cell for the current class."""

from __future__ import annotations

import streamlit as st

import explain
from ui import compute, page, pictures, report, resources, share, state, text, widgets

DEFAULT_METHODS = explain.methods.DEFAULT_GRID


@st.fragment
def method_grid(m: explain.Model, sel: state.Selection) -> None:
    """The method and layer pickers and the grid. A fragment: picking reruns this, not the sidebar."""
    with page.guard("comparing methods and layers"):
        _method_grid(m, sel)


def _method_grid(m: explain.Model, sel: state.Selection) -> None:
    layers = m.layers()
    names = [n for n, _ in layers]
    shapes = dict(layers)
    c1, c2 = st.columns(2)
    methods = c1.multiselect("Methods (across)", explain.method_names(), key=state.COMPARE_METHODS,
                             format_func=text.method_title)
    chosen = c2.multiselect("Layers (down)", names, key=state.COMPARE_LAYERS,
                            format_func=lambda n: widgets.layer_label(m, n, shapes[n]))
    rows = sorted(chosen, key=names.index)
    share.publish_page({share.METHODS: list(methods), share.LAYERS: rows})
    if not methods or not rows:
        st.info("Pick at least one method and one layer.")
        st.stop()

    cells = len(methods) * len(rows)
    tiles, captions = [], []  # the grid again, for the report
    with st.spinner(f"Computing {cells} maps…"):
        header = st.columns(len(methods))
        for col, method in zip(header, methods):
            col.markdown(f"**{text.md_escape(explain.get_method(method).title)}**")
        for layer in rows:
            st.markdown(f"**{text.md_escape(widgets.layer_label(m, layer, shapes[layer]))}**")
            for col, method in zip(st.columns(len(methods)), methods):
                with col:
                    try:
                        explain.get_method(method).check(m, layer)
                        r = compute.run_explain(m, sel, [sel.target], layer=layer, method=method)
                    except explain.MethodNotApplicableError as err:
                        compute.not_applicable(err)
                        tiles.append(report.not_applicable_tile(str(err)))
                        captions.append(f"{explain.get_method(method).title} · {layer} (n/a)")
                        continue
                    title = explain.get_method(method).title
                    tile = compute.overlays(r, sel)[0]
                    st.image(pictures.png(tile), caption=text.md_escape(f"{title} · {layer}"), width="stretch", output_format="PNG")
                    tiles.append(tile)
                    captions.append(f"{title} · {layer}")
    report.download_button(st.container(), "compare_methods", m, sel, tiles, captions, columns=len(methods),
                           extra={"methods": list(methods), "layers": rows})


with page.guard("comparing methods and layers"):
    sel = page.need_selection()
    m = resources.get_model(sel.model_name)
    ss = st.session_state
    st.header("Compare methods & layers")
    st.caption(f"Every cell explains {text.md_escape(text.class_label(m.categories, sel.target))}.")
    names = [n for n, _ in m.layers()]
    if ss.get(state.GRID_CONTEXT) != m.name or any(n not in names for n in ss.get(state.COMPARE_LAYERS, [])):
        ss[state.COMPARE_LAYERS] = widgets.grid_default_layers(m)
        ss[state.GRID_CONTEXT] = m.name
    ss.setdefault(state.COMPARE_METHODS, list(DEFAULT_METHODS))
    method_grid(m, sel)
