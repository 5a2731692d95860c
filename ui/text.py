"""Words on the page: Markdown escaping, class labels, percentages and plain-language captions.

User-controlled strings (file names, category names, layer names) are only ever shown as plain
text or as Markdown with its special characters escaped; nothing here renders raw HTML.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import explain


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~$])")


def md_escape(text: object) -> str:
    """``text`` with Markdown's special characters escaped, so it renders literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def class_label(categories: Sequence[str], index: int) -> str:
    """``"281 · tabby"``: how a class is shown in pickers and captions."""
    return f"{index} · {categories[index]}"


@functools.lru_cache(maxsize=16)
def _labels(categories: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{i} · {name}" for i, name in enumerate(categories))


def class_labels(categories: Sequence[str]) -> tuple[str, ...]:
    """Every class's :func:`class_label`, made once per list of names: a 1000-class picker asks for
    all of them on every rerun."""
    return _labels(tuple(categories))


def percent(p: float) -> str:
    """A probability as a short percentage (``"62%"``, ``"0.4%"``, ``"<0.1%"``)."""
    value = 100.0 * float(p)
    if value >= 9.5:
        return f"{value:.0f}%"
    if value >= 0.1:
        return f"{value:.1f}%"
    return "<0.1%"


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def explanation_caption(r: explain.Explanation, index: int = 0) -> str:
    """One plain-language sentence on what the map of target ``index`` of ``r`` means.

    Returns plain text (Markdown-escaped): the caller shows it with ``st.markdown``.
    """
    top_i, top_name, top_p = r.predictions[0]
    target, name = r.targets[index], r.target_names[index]
    method = r.method_info
    # "Why A rather than B": the map is of the score difference, and the sentence says so.
    rather = f" rather than '{r.contrast_name}'" if r.contrast_name is not None else ""
    if r.empty(index):
        # A flat map highlights nothing: no sentence that claims a region.
        return md_escape(f"The model gives '{name}' {percent(r.prob(target))}. "
                         f"No part of the picture raises the score of '{name}' at this layer.")
    if target == top_i:
        opening = f"The model is {percent(top_p)} sure this is {_article(top_name)} {top_name}; "
        rest = method.reading(f"its score for '{name}'{rather}")
    else:
        opening = f"The model's top guess is {top_name} ({percent(top_p)}); for '{name}' ({percent(r.prob(target))}) "
        rest = method.reading(f"that score{rather}")
    return md_escape(opening + rest)


def strength_caption(r: explain.Explanation, index: int = 0) -> str:
    """``"The evidence for 'street sign' is 10% as strong as for the top class, 'Egyptian cat'."``
    (``""`` for the top class itself, or without a reference; Markdown-escaped)."""
    s = r.strength(index)
    if s is None or r.reference is None or r.targets[index] == r.reference[0]:
        return ""
    top_name = r.predictions[0][1]
    return md_escape(f"The evidence for '{r.target_names[index]}' is {percent(s)} as strong as for the "
                     f"top class, '{top_name}'.")


POLARITY_WORDS = {"dark_on_light": "dark strokes on a light background", "light_on_dark": "light strokes on a dark background"}


def polarity_caption(r: explain.Explanation, m: explain.Model) -> str:
    """Which polarity reading was used for a greyscale picture (``""`` for colour models)."""
    if r.polarity is None:
        return ""
    how = "read from the picture" if r.polarity_auto else "as set in the sidebar"
    trained = POLARITY_WORDS[m.preprocess.trained_polarity]
    then = (f"the model was trained on {trained}, so the picture was inverted for it" if r.polarity_flipped
            else f"as the model's training pictures ({trained})")
    return md_escape(f"Picture read as {POLARITY_WORDS[r.polarity]} ({how}); {then}.")


def method_title(name: str) -> str:
    """A method's title for pickers and captions (``"gradcam++"`` → ``"Grad-CAM++"``)."""
    return explain.get_method(name).title
