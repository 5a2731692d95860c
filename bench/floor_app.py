"""The floor for bench/load.py: the smallest Streamlit round trip, one selectbox and one line of text.

A change of the selectbox reruns this script, which draws nothing but the line; the time from the
click to the new line is what Streamlit itself costs (websocket, rerun, diff, render) before an
app does any work.
"""

import streamlit as st

choice = st.selectbox("Option", [f"option {i}" for i in range(10)])
st.markdown(f"**Shown:** {choice}")
