"""Streamlit-side helpers of the CAM Explorer dashboard (the engine, ``explain``, never imports these).

- ``ui.state``: every session-state key, widget ranges, and the :class:`~ui.state.Selection`;
- ``ui.resources``: cached models (bounded, never mutated) and decoded images;
- ``ui.widgets``: the shared sidebar controls; ``ui.share``: the shareable link;
- ``ui.page``: the page guard and this run's selection; ``ui.compute``: the explain call;
- ``ui.text``: escaping, labels, captions; ``ui.pictures``: PNG encoding; ``ui.charts``: figures;
- ``ui.report``: the report download; ``ui.streamlit_compat``: the one Streamlit internal we touch.
"""
