"""CAM Explorer: where did the image classifier look? Run with ``streamlit run app.py``.

This entry point runs on every page: it draws the shared sidebar controls (so they keep their
values across pages) and then the selected page. Adding a page is one line in ``PAGES``.
"""

from __future__ import annotations

import streamlit as st

from ui import page, widgets

st.set_page_config(page_title="CAM Explorer", page_icon=":material/frame_inspect:", layout="wide",
                   initial_sidebar_state=340)

PAGES = [
    st.Page("pages/explain.py", title="Explain", icon=":material/visibility:", default=True),
    st.Page("pages/compare_classes.py", title="Compare classes", icon=":material/grid_view:"),
    st.Page("pages/compare_methods.py", title="Compare methods & layers", icon=":material/table_chart:"),
    st.Page("pages/faithfulness.py", title="Faithfulness", icon=":material/fact_check:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
    st.Page("pages/own_model.py", title="Your model", icon=":material/upload_file:"),
    st.Page("pages/audit.py", title="Audit", icon=":material/dataset:"),
]

current = st.navigation(PAGES, position="top")
with st.sidebar, page.guard("setting up the controls"):
    widgets.sidebar()
current.run()
