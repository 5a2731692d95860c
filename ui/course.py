"""The lesson's ImageNet classes (the pytorch-grad-cam ResNet-50 lesson), as the lesson labels them.

Where the lesson's label is not the model's name for that id, the page says so and offers the id
that does carry that name: the corrections are read from the model's own categories, not typed in.
"""

from __future__ import annotations

import streamlit as st

import explain
from ui import state, text

#: (ImageNet id, the lesson's label for it), in the lesson's order.
LESSON_CLASSES: tuple[tuple[int, str], ...] = (
    (157, "Siberian husky"), (162, "beagle"), (245, "French bulldog"), (281, "tabby"), (285, "Egyptian cat"),
    (360, "otter"), (537, "dogsled"), (799, "sliding door"), (918, "street sign"),
)


def lesson_ids(m: explain.Model) -> list[int]:
    """The lesson's nine ids as it uses them, or [] for a model that is not an ImageNet-1k classifier."""
    return [i for i, _ in LESSON_CLASSES] if m.num_classes == 1000 else []


def corrections(m: explain.Model) -> list[tuple[int, str, str, int | None]]:
    """``(lesson id, lesson label, the model's name for that id, the id named like the label or None)``
    for each lesson class whose label is not the model's name for it."""
    if not lesson_ids(m):
        return []
    lower = {c.lower(): i for i, c in enumerate(m.categories)}
    out = []
    for i, label in LESSON_CLASSES:
        name = m.categories[i]
        if name.lower() != label.lower():
            out.append((i, label, name, lower.get(label.lower())))
    return out


def correction_text(lesson_id: int, label: str, name: str, right: int | None) -> str:
    """``"The lesson calls 157 'Siberian husky', but 157 is 'papillon'; 'Siberian husky' is 250."``"""
    where = f"; '{label}' is {right}" if right is not None else ""
    return f"The lesson calls {lesson_id} '{label}', but {lesson_id} is '{name}'{where}."


def _set_target(value: int) -> None:
    st.session_state[state.TARGET] = value


def lesson_picker(m: explain.Model, target: int) -> None:
    """Under the sidebar's class picker: the lesson's nine classes, one click each, and a correction
    with a one-click fix when the chosen class is one the lesson mislabels."""
    ids = lesson_ids(m)
    if not ids:
        return
    with st.popover("Lesson classes", width="stretch"):
        labels = dict(LESSON_CLASSES)
        for i in ids:
            st.button(text.class_label(m.categories, i) + (f" (lesson: {labels[i]})"
                      if labels[i].lower() != m.categories[i].lower() else ""),
                      key=f"cx.lesson.{i}", on_click=_set_target, args=(i,), width="stretch")
    for i, label, name, right in corrections(m):
        if i == target:
            st.caption(text.md_escape(correction_text(i, label, name, right)))
            if right is not None:
                st.button(f"Use {right} ({m.categories[right]})", key=f"cx.lesson.fix.{i}",
                          on_click=_set_target, args=(right,))


def replace_in(classes: list[int], old: int, new: int) -> list[int]:
    """``classes`` with ``old`` replaced by ``new`` (kept once, in place)."""
    out = [new if c == old else c for c in classes]
    return list(dict.fromkeys(out))
