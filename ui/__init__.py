"""Streamlit-side helpers of the CAM Explorer dashboard.

``ui.state`` names every session-state key and holds the current :class:`~ui.state.Selection`;
``ui.resources`` caches models and decoded images; ``ui.widgets`` draws the shared sidebar
controls; ``ui.views`` draws results. The engine (``explain``) never imports anything from here.
"""
