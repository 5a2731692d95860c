"""Upload limits and HTML safety: ``.streamlit/config.toml`` and what the app's sources say about it.

* the server's upload limit is set and sensible, XSRF (and CORS) protection is not switched off;
* every ``file_uploader`` whose help text states a limit ("up to N MB") states the limit that
  really applies to it (its own ``max_upload_size``, else ``server.maxUploadSize``);
* no source renders raw HTML built from anything but a constant string.

The checks read the sources with ``ast`` (no Streamlit run), so they are instant.
"""

from __future__ import annotations

import ast
import pathlib
import re
from dataclasses import dataclass

import pytest
import tomllib

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = REPO / ".streamlit" / "config.toml"
SOURCES = sorted([REPO / "app.py", *(REPO / "pages").glob("*.py"), *(REPO / "ui").glob("*.py")])
IMAGE_UPLOADER_KEY = "UPLOAD"  # ui.state.UPLOAD, the image uploader
LIMIT_IN_TEXT = re.compile(r"(?:up to|max(?:imum)?|limit(?:ed to)?)\s*(\d+(?:\.\d+)?)\s*MB", re.IGNORECASE)


def config() -> dict:
    return tomllib.loads(CONFIG.read_text(encoding="utf-8"))


def server_limit() -> float:
    return float(config()["server"]["maxUploadSize"])


# ---- config.toml --------------------------------------------------------------------------------


def test_upload_limit_is_set_and_sensible() -> None:
    limit = config()["server"].get("maxUploadSize")
    assert isinstance(limit, int) and not isinstance(limit, bool), f"server.maxUploadSize = {limit!r}"
    # Streamlit's default is 200 MB; a classroom dashboard for photos needs far less.
    assert 1 <= limit <= 50, f"server.maxUploadSize = {limit} MB"


def test_xsrf_and_cors_protection_stay_on() -> None:
    server = config()["server"]
    assert server.get("enableXsrfProtection", True) is True
    assert server.get("enableCORS", True) is True


def test_no_error_details_or_tracebacks_for_users() -> None:
    client = config().get("client", {})
    assert client.get("showErrorDetails", "full") in ("none", False, "type"), client.get("showErrorDetails")


# ---- file uploaders and the limits they state ----------------------------------------------------


@dataclass
class Uploader:
    where: str
    key: str
    own_limit: float | None  # max_upload_size=..., resolved; None: the server's limit applies
    help: str | None  # help text, with module constants filled in; None if there is none


def _constants(tree: ast.Module) -> dict[str, object]:
    """Module-level ``NAME = <literal>`` assignments."""
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = value
    return out


def _text(node: ast.AST, consts: dict[str, object]) -> str | None:
    """The string ``node`` evaluates to when it uses only literals and module constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and isinstance(consts.get(node.id), (str, int, float)):
        return str(consts[node.id])
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            inner = v.value if isinstance(v, ast.FormattedValue) else v
            piece = _text(inner, consts)
            if piece is None:
                return None
            parts.append(piece)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, consts), _text(node.right, consts)
        return None if left is None or right is None else left + right
    return None


def _number(node: ast.AST, consts: dict[str, object]) -> float | None:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        value = consts.get(node.id) if isinstance(node, ast.Name) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _calls(tree: ast.Module, name: str) -> list[ast.Call]:
    def called(node: ast.Call) -> str | None:
        f = node.func
        return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None

    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and called(n) == name]


def uploaders() -> list[Uploader]:
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        consts = _constants(tree)
        for call in _calls(tree, "file_uploader"):
            kw = {k.arg: k.value for k in call.keywords if k.arg}
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            own = None
            if "max_upload_size" in kw:
                own = _number(kw["max_upload_size"], consts)
                assert own is not None, f"{where}: max_upload_size is not a constant the test can read"
            key = kw.get("key")
            key_text = key.attr if isinstance(key, ast.Attribute) else _text(key, consts) if key else ""
            help_text = _text(kw["help"], consts) if "help" in kw else None
            if "help" in kw and help_text is None:
                # Built at run time (e.g. from st.get_option): then it cannot disagree with the config.
                source = ast.get_source_segment(path.read_text(encoding="utf-8"), kw["help"]) or ""
                assert "maxUploadSize" in source or "max_upload" in source.lower(), (
                    f"{where}: help text is computed from something other than the upload limit: {source}"
                )
            found.append(Uploader(where, key_text or "", own, help_text))
    return found


def test_the_image_uploader_exists_and_its_limit_is_the_servers() -> None:
    found = [u for u in uploaders() if u.key == IMAGE_UPLOADER_KEY]
    assert len(found) == 1, [u.where for u in uploaders()]
    [image] = found
    limit = image.own_limit if image.own_limit is not None else server_limit()
    assert 1 <= limit <= 50, f"{image.where}: images may be {limit} MB"


@pytest.mark.parametrize("uploader", uploaders(), ids=lambda u: u.where)
def test_stated_upload_limits_agree_with_the_real_ones(uploader: Uploader) -> None:
    if uploader.help is None:
        return  # says nothing about a limit: nothing to disagree with
    stated = [float(n) for n in LIMIT_IN_TEXT.findall(uploader.help)]
    real = uploader.own_limit if uploader.own_limit is not None else server_limit()
    source = (
        "its max_upload_size" if uploader.own_limit is not None else "server.maxUploadSize in .streamlit/config.toml"
    )
    for n in stated:
        assert n == real, f"{uploader.where}: help says {n:g} MB but {source} is {real:g} MB ({uploader.help!r})"


def test_limit_regex_reads_the_usual_phrasings() -> None:
    assert LIMIT_IN_TEXT.findall("JPEG or PNG, up to 20 MB.") == ["20"]
    assert LIMIT_IN_TEXT.findall("max 200MB") == ["200"]
    assert LIMIT_IN_TEXT.findall("ResNet-50 weights are ~98 MB") == []


# ---- HTML ---------------------------------------------------------------------------------------


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def raw_html_offenders(source: str) -> list[int]:
    """Line numbers of calls that render raw HTML from anything but a literal string.

    That is ``unsafe_allow_html=<not False>``, ``st.html`` and ``components.html``/``iframe``: with
    f-strings, file names, class names or model output, user-controlled markup could reach the page.
    """
    lines = []
    for call in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)):
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        unsafe = any(k.arg == "unsafe_allow_html" and not _is_false(k.value) for k in call.keywords)
        if not (unsafe or name in ("html", "iframe")):
            continue
        body = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg in ("body", "html")), None)
        if not (isinstance(body, ast.Constant) and isinstance(body.value, str)):
            lines.append(call.lineno)
    return lines


def test_raw_html_only_from_constant_strings() -> None:
    offenders = {
        str(path.relative_to(REPO)): found
        for path in SOURCES
        if (found := raw_html_offenders(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"raw HTML from non-constant text (file: lines): {offenders}"


def test_html_check_really_looks() -> None:
    bad = (
        "import streamlit as st\n"
        "name = st.text_input('x')\n"
        "st.markdown(f'<b>{name}</b>', unsafe_allow_html=True)\n"
        "st.html(name)\n"
        "st.write(name, unsafe_allow_html=flag)\n"
    )
    ok = (
        "import streamlit as st\n"
        "st.markdown('<br>', unsafe_allow_html=True)\n"
        "st.markdown(x, unsafe_allow_html=False)\n"
        "st.markdown(x)\n"
    )
    assert raw_html_offenders(bad) == [3, 4, 5]
    assert raw_html_offenders(ok) == []
