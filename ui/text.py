"""Words on the page: Markdown escaping, class labels, percentages and plain-language captions.

User-controlled strings (file names, category names, layer names) are only ever shown as plain
text or as Markdown with its special characters escaped; nothing here renders raw HTML.
"""

from __future__ import annotations

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
    if target == top_i:
        opening = f"The model is {percent(top_p)} sure this is {_article(top_name)} {top_name}; "
        rest = method.reading(f"its score for '{name}'{rather}")
    else:
        opening = f"The model's top guess is {top_name} ({percent(top_p)}); for '{name}' ({percent(r.prob(target))}) "
        rest = method.reading(f"that score{rather}")
    return md_escape(opening + rest)


def method_title(name: str) -> str:
    """A method's title for pickers and captions (``"gradcam++"`` → ``"Grad-CAM++"``)."""
    return explain.get_method(name).title
