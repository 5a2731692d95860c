"""Controls for a method's declared options (``Method.params``): one slider or number box each.

Nothing here knows any method: the controls are drawn from the :class:`explain.Param` declarations,
and their values live under ``state.option_key(method, param)`` in session state, so every page
(and a grid of several methods) runs each method with the options the user chose for it.
"""

from __future__ import annotations

import streamlit as st

import explain
from ui import state


def options_for(method: str) -> dict[str, float | int]:
    """The options the user chose for ``method`` (declared defaults where no control was touched)."""
    info = explain.get_method(method)
    given = {}
    for p in info.params:
        value = st.session_state.get(state.option_key(info.name, p.name))
        if value is not None:
            given[p.name] = value
    try:
        return info.options(given)
    except explain.ExplainError:
        return info.options(None)  # a stale value (e.g. from an older range) falls back to defaults


def param_control(method: str, p: explain.Param) -> float | int:
    """Draw one control for parameter ``p`` of ``method`` and return its value."""
    key = state.option_key(method, p.name)
    ss = st.session_state
    cast = int if p.integer else float
    if key not in ss or not (p.low <= ss[key] <= p.high):
        ss[key] = cast(p.default)
    kwargs = {"min_value": cast(p.low), "max_value": cast(p.high), "step": cast(p.step), "key": key, "help": p.help or None}
    if p.high - p.low > state.SLIDER_MAX_SPAN:
        return st.number_input(p.label, **kwargs)
    return st.slider(p.label, **kwargs)


def method_options(method: str) -> dict[str, float | int]:
    """The option controls of ``method`` (in an expander; nothing when it declares none)."""
    info = explain.get_method(method)
    if not info.params:
        return {}
    with st.expander(f"{info.title} options", icon=":material/tune:"):
        for p in info.params:
            param_control(info.name, p)
    return options_for(method)
