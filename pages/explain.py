"""Explain: the image as the model saw it, the raw map with its colour bar, and the overlay."""

from __future__ import annotations

import streamlit as st

import explain
from ui import charts, compute, page, pictures, report, resources, share, state, text, widgets

RELATIVE_HELP = (
    "On: the map is divided by the top class's map maximum (same method and layer), so weak evidence "
    "for a class looks weak. Off: the sidebar's colour scale (each map stretched on its own)."
)

with page.guard("explaining the image"):
    sel = page.need_selection()
    m = resources.get_model(sel.model_name)
    title = explain.get_method(sel.method).title
    st.header("Where did the model look?")
    contrast = widgets.contrast_picker(m, sel)
    share.publish_page({share.CONTRAST: [contrast]} if contrast is not None else {})
    ss = st.session_state
    ss.setdefault(state.EXPLAIN_RELATIVE, True)
    # With a contrast class the map is of a score difference: no top-class map to compare with.
    relative = st.toggle("Scale relative to the top class", key=state.EXPLAIN_RELATIVE, help=RELATIVE_HELP,
                         disabled=contrast is not None) and contrast is None
    try:
        r = compute.run_explain(m, sel, [sel.target], relative=relative, contrast=contrast)
    except explain.MethodNotApplicableError as err:
        st.warning(text.md_escape(err))
        st.stop()

    raw = r.maps[0]
    h, w = raw.shape[-2:]
    normalize = explain.RELATIVE if relative else sel.normalize
    left, middle, right = st.columns(3, gap="medium")
    with left:
        st.markdown("**As the model sees it**")
        st.image(pictures.png(r.image), width="stretch", output_format="PNG")
        st.caption(text.md_escape(f"{sel.image_label} · {state.FIT_LABELS.get(sel.fit, sel.fit)}"))
    with middle:
        where = "the input pixels" if r.method_info.on_input else f"layer {r.layer}"
        st.markdown(f"**Raw {text.md_escape(title)} map** · {h}×{w} at {text.md_escape(where)}")
        st.image(charts.heatmap_png(raw.numpy(), sel.raw_cmap), width="stretch", output_format="PNG")
    with right:
        rather = f" rather than {text.class_label(m.categories, contrast)}" if contrast is not None else ""
        st.markdown(f"**Overlay** · {text.md_escape(text.class_label(m.categories, r.targets[0]) + rather)}")
        overlay = compute.overlays(r, sel, normalize=normalize)[0]
        # PNG: Streamlit's default JPEG smears fine detail (saliency maps) and shifts colours.
        overlay_png = pictures.png(overlay)
        st.image(overlay_png, width="stretch", output_format="PNG")
        on = f"On the original picture, {r.original.size[0]}×{r.original.size[1]}" if sel.on_original else "On the model's view"
        dimmed = " · dimmed: what the centre crop cut off" if sel.on_original and sel.fit == "crop" else ""
        st.caption(on + dimmed)

    st.markdown(text.explanation_caption(r))
    strength = text.strength_caption(r) if relative else ""
    if strength:
        st.markdown(strength)
    polarity = text.polarity_caption(r, m)
    if polarity:
        st.caption(polarity)
    compute.show_notices(r)

    stem = f"{r.model_name}_{r.method}_{r.targets[0]}".replace("+", "p")
    # The download is at the original size: the overlay shown, or (shown on the model's view) drawn
    # on the original only when the button is clicked.
    download = overlay_png if sel.on_original else (
        lambda: pictures.png(compute.overlays(r, sel, normalize=normalize, on="original")[0]))
    d1, d2, d3, _ = st.columns([1, 1, 1, 1])
    d1.download_button("Download overlay (PNG)", download, file_name=f"{stem}_overlay.png",
                       mime="image/png", on_click="ignore", help="At the original picture's size.")
    d2.download_button("Download raw map (.npy)", pictures.npy_bytes(r.maps.numpy()), file_name=f"{stem}_map.npy",
                       mime="application/octet-stream", on_click="ignore")
    tiles = [r.image, pictures.map_image(raw.numpy(), sel.raw_cmap, size=report.TILE), overlay]
    captions = [sel.image_label, f"raw {title} map {h}x{w}", text.class_label(m.categories, r.targets[0])]
    report.download_button(d3, "explain", m, sel, tiles, captions, columns=len(tiles))
