"""Audit: a whole set of pictures at once — accuracy, where the model looks per class, shortcuts.

Model, method and layer come from the sidebar. The pictures: a bundled set (scikit-learn's digits
and the shortcut demo for the digit models, the sample gallery) or this session's own uploads
(many files, or zips). The run shows its progress and can be cancelled; what is finished is kept,
so running again continues where it stopped.
"""

from __future__ import annotations

import hashlib

import streamlit as st

import explain
from ui import audit_view, page, pictures, resources, share, state, text

GALLERY_COLUMNS = 6
MEAN_COLUMNS = 5


def _open_in_explain(result: audit_view.Result, file: str) -> None:
    data = audit_view.picture_bytes(result, file)
    if data is not None:
        st.session_state[state.PINNED_IMAGE] = (file, data)
        st.session_state[state.AUDIT_GOTO] = True


with page.guard("auditing the pictures"):
    page.enter()
    ss = st.session_state
    if ss.pop(state.AUDIT_GOTO, False):
        st.switch_page("pages/explain.py")
    sel = state.current()
    if sel is None:
        st.info("The controls in the sidebar could not be set up; see the message there.")
        st.stop()
    share.publish_page({})
    m = resources.get_model(sel.model_name)
    st.header("Audit a whole set of pictures")
    st.caption(text.md_escape(
        f"Model {m.name}, method {text.method_title(sel.method)}, layer {sel.layer} (from the sidebar). "
        "Every picture is explained; then the page sums up how often the model is right, where it looks for "
        "each class, and whether it keeps looking at the same corner or edge (a possible shortcut)."
    ))

    digit = audit_view.is_digit_model(m)
    options = [k for k, (_t, only_digits) in audit_view.SETS.items() if digit or not only_digits] + [audit_view.UPLOAD]
    if ss.get(state.AUDIT_SET) not in options:
        ss[state.AUDIT_SET] = options[0]
    titles = {k: t for k, (t, _d) in audit_view.SETS.items()} | {audit_view.UPLOAD: "My own pictures"}
    choice = st.radio("Pictures", options, key=state.AUDIT_SET, format_func=titles.get, horizontal=True)
    files = []
    if choice == audit_view.UPLOAD:
        files = st.file_uploader(
            "Pictures, or a .zip of them (sub-folders named by class give labels)", accept_multiple_files=True,
            key=state.AUDIT_UPLOAD,
            help=(f"Up to {audit_view.MAX_PICTURES:,} pictures and {audit_view.MAX_MB:.0f} MB per audit "
                  f"(each file at most {st.get_option('server.maxUploadSize')} MB). They stay in your session."),
        ) or []
    ss.setdefault(state.AUDIT_TARGET, "predicted")
    target = st.radio("Explain each picture's", ["predicted", "label"], key=state.AUDIT_TARGET, horizontal=True,
                      format_func={"predicted": "predicted class", "label": "true class (needs labels)"}.get)
    upload_id = hashlib.sha256("".join(f"{f.name}:{f.size};" for f in files).encode()).hexdigest()[:12]
    set_id = f"upload:{upload_id}" if choice == audit_view.UPLOAD else choice
    context = (set_id, m.name, sel.method, sel.layer, target, sel.fit)
    st.button("Run the audit", type="primary", icon=":material/play_arrow:",
              on_click=lambda: ss.__setitem__(state.AUDIT_RUN, True))

    if ss.pop(state.AUDIT_RUN, False):
        try:
            if choice == audit_view.UPLOAD:
                if not files:
                    raise audit_view.LimitError("Upload some pictures (or a zip of them) first.")
                items = audit_view.upload_items(files)
            else:
                items = audit_view.bundled_items(choice)
            audit_view.check_count(audit_view.count(items))
            a = audit_view.run(m, items, context, st.container())
        except audit_view.LimitError as err:
            st.error(text.md_escape(err))
        except explain.ExplainError as err:
            st.error(text.md_escape(err))
        else:
            ss[state.AUDIT_RESULT] = audit_view.Result(a, context, audit_view.pictures_of(items),
                                                       audit_view.parquet_bytes(context))
            if a.summary.get("cancelled"):
                st.info("The audit was cancelled; the pictures finished so far are kept. Run it again to go on.")
    elif ss.get(state.AUDIT_CANCEL):
        ss[state.AUDIT_CANCEL] = False
        st.info("The audit was cancelled; the pictures finished so far are kept. Run it again to continue "
                "where it stopped.")

    result = ss.get(state.AUDIT_RESULT)
    if not isinstance(result, audit_view.Result):
        st.info("Choose the pictures and click **Run the audit**.")
        st.stop()
    if result.context[1] != m.name:  # its maps and pictures belong to another model's view
        st.info(text.md_escape(f"The last audit was made with {result.context[1]}; run the audit to see {m.name}'s."))
        st.stop()
    a = result.audit
    s = a.summary
    if result.context != context:
        st.caption(text.md_escape(
            f"Showing the last audit ({result.context[0]}, {result.context[1]}, {result.context[2]}); "
            "run the audit again for the current choice."))

    if s.get("skipped_already_done"):
        st.caption(f"{s['skipped_already_done']:,} picture(s) were done in an earlier run with the same settings "
                   "and were not repeated.")
    st.subheader("Summary")
    c = st.columns(5)
    c[0].metric("Pictures", f"{s['ok']:,}", help="explained (of those given)")
    c[1].metric("Accuracy", f"{s['accuracy']:.1%}" if s.get("accuracy") is not None else "–",
                help="over the pictures with a label (their folder's class)")
    c[2].metric("Mean confidence", f"{s['mean_confidence']:.1%}" if s.get("mean_confidence") is not None else "–")
    c[3].metric("Pictures per second", f"{s['pictures_per_second']:.0f}" if s.get("pictures_per_second") else "–")
    c[4].metric("Could not be used", f"{s['failed']:,}")

    findings = a.shortcuts()
    st.subheader("Possible shortcuts")
    if findings:
        for f in findings:
            st.warning(text.md_escape(f.message), icon=":material/warning:")
    else:
        st.success("No shortcut found: for no class does the evidence keep landing in one corner or edge.")

    cm = a.confusion()
    if not cm.empty:
        st.subheader("Confusion matrix")
        st.caption("Rows: the true class (the folder), columns: the prediction.")
        st.dataframe(cm, width="stretch")

    st.subheader("Where the model looks, per class")
    st.caption("The mean map of the pictures explained as each class (each map scaled to its own peak first).")
    tiles = audit_view.class_mean_tiles(result, sel.colormap)
    for start in range(0, len(tiles), MEAN_COLUMNS):
        for col, (cls, img, n) in zip(st.columns(MEAN_COLUMNS), tiles[start : start + MEAN_COLUMNS]):
            col.image(pictures.png(img), caption=text.md_escape(f"{text.class_label(m.categories, cls)} · {n} pictures"),
                      output_format="PNG", width="stretch")

    if s["failed"]:
        with st.expander(f"{s['failed']} file(s) could not be used"):
            st.dataframe(a.failed[["file", "error"]], hide_index=True, width="stretch")

    st.subheader("Pictures")
    ss.setdefault(state.AUDIT_FILTER, "all")
    which = st.radio("Show", list(audit_view.FILTERS), key=state.AUDIT_FILTER, format_func=audit_view.FILTERS.get,
                     horizontal=True)
    rows = audit_view.filtered(result, which)
    st.caption(f"{len(rows):,} picture(s); the first {min(len(rows), audit_view.GALLERY_SIZE)} are shown.")
    shown = rows.head(audit_view.GALLERY_SIZE)
    for start in range(0, len(shown), GALLERY_COLUMNS):
        cols = st.columns(GALLERY_COLUMNS)
        for col, (_i, row) in zip(cols, shown.iloc[start : start + GALLERY_COLUMNS].iterrows()):
            with col:
                pic = audit_view.overlay(m, result, row, sel.colormap, result.context[5])
                label = f" · true {row['label_name']}" if row["label_name"] is not None and str(row["label_name"]) != "<NA>" else ""
                caption = f"{row['file']}: {row['prediction_name']} {text.percent(row['confidence'])}{label}"
                if pic is not None:
                    st.image(pictures.png(pic), caption=text.md_escape(caption), output_format="PNG", width="stretch")
                else:
                    st.caption(text.md_escape(caption))
                st.button("Open in Explain", key=f"cx.audit.open.{int(row['source_index'])}",
                          on_click=_open_in_explain, args=(result, str(row["file"])))

    st.subheader("Downloads")
    d = st.columns(4)
    d[0].download_button("Table (Parquet)", result.parquet, file_name="audit.parquet",
                         mime="application/vnd.apache.parquet", on_click="ignore")
    d[1].download_button("Table (CSV)", a.table.to_csv(index=False).encode(), file_name="audit.csv", mime="text/csv",
                         on_click="ignore")
    d[2].download_button("Maps (.npy)", audit_view.npy(a), file_name="maps.npy", mime="application/octet-stream",
                         on_click="ignore")
    d[3].download_button("Report (zip)", audit_view.report_zip(result, sel.colormap), file_name="audit_report.zip",
                         mime="application/zip", on_click="ignore")
