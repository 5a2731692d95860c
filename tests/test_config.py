"""Upload limits and HTML safety: ``.streamlit/config.toml`` and what the app's sources say about it.

* the server's upload limit is set, fits every uploader's own limit (the server refuses anything
  bigger with HTTP 413, whatever the widget says) and a real VGG-19 checkpoint; XSRF (and CORS)
  protection is not switched off;
* the image uploader's limit is the image loader's own (``explain.MAX_IMAGE_MB``) and it says so;
* every ``file_uploader`` with a limit states it ("up to N MB"), and states the limit that really
  applies to it (its own ``max_upload_size``, else ``server.maxUploadSize``);
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
WEIGHTS_UPLOADER_KEY = "OWN_WEIGHTS"  # ui.state.OWN_WEIGHTS, the Your model page's weights
ENGINE_SOURCES = (REPO / "explain" / "io.py", REPO / "explain" / "custom.py")  # ``explain.NAME`` constants
LIMIT_IN_TEXT = re.compile(r"(?:up to|max(?:imum)?|limit(?:ed to)?)\s*(\d+(?:\.\d+)?)\s*MB", re.IGNORECASE)


def config() -> dict:
    return tomllib.loads(CONFIG.read_text(encoding="utf-8"))


def server_limit() -> float:
    return float(config()["server"]["maxUploadSize"])


# ---- config.toml --------------------------------------------------------------------------------


def test_upload_limit_is_set_and_sensible() -> None:
    limit = config()["server"].get("maxUploadSize")
    assert isinstance(limit, int) and not isinstance(limit, bool), f"server.maxUploadSize = {limit!r}"
    # Weights need hundreds of MB; more than a GB held in memory per upload is not sensible here.
    assert 100 <= limit <= 1024, f"server.maxUploadSize = {limit} MB"


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


def engine_constants() -> dict[str, object]:
    """Module constants of the engine files the app refers to as ``explain.NAME``."""
    out: dict[str, object] = {}
    for path in ENGINE_SOURCES:
        out.update(_constants(ast.parse(path.read_text(encoding="utf-8"))))
    return out


def _ref(node: ast.AST, consts: dict[str, object]) -> object:
    """The value of a module constant ``NAME`` or an engine constant ``explain.NAME``, else None."""
    if isinstance(node, ast.Name):
        return consts.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "explain":
        return engine_constants().get(node.attr)
    return None


def _text(node: ast.AST, consts: dict[str, object]) -> str | None:
    """The string ``node`` evaluates to when it uses only literals and module constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(_ref(node, consts), (str, int, float)):
        return str(_ref(node, consts))
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
        value = _ref(node, consts)
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


def _one(key: str) -> Uploader:
    found = [u for u in uploaders() if u.key == key]
    assert len(found) == 1, (key, [(u.where, u.key) for u in uploaders()])
    return found[0]


def test_the_image_uploader_is_limited_by_the_loaders_own_check() -> None:
    image = _one(IMAGE_UPLOADER_KEY)
    loader_limit = engine_constants()["MAX_IMAGE_MB"]
    assert image.own_limit == loader_limit, f"{image.where}: max_upload_size is not explain.MAX_IMAGE_MB"
    assert image.help is not None and [float(n) for n in LIMIT_IN_TEXT.findall(image.help)] == [loader_limit]
    assert 1 <= loader_limit <= 50, f"pictures may be {loader_limit} MB"
    # The server accepts more (weights); the loader itself must refuse a bigger picture.
    assert server_limit() > loader_limit


def test_the_server_accepts_every_uploaders_own_limit() -> None:
    for u in uploaders():
        if u.own_limit is not None:
            assert u.own_limit <= server_limit(), (
                f"{u.where}: the widget allows {u.own_limit:g} MB but the server refuses anything over "
                f"{server_limit():g} MB (server.maxUploadSize)"
            )


def test_the_weights_uploader_fits_a_real_vgg19_checkpoint() -> None:
    from torchvision.models import VGG19_BN_Weights

    weights = _one(WEIGHTS_UPLOADER_KEY)
    limit = weights.own_limit if weights.own_limit is not None else server_limit()
    vgg19 = VGG19_BN_Weights.IMAGENET1K_V1.meta["_file_size"]  # MB, torchvision's own figure
    assert vgg19 <= limit <= server_limit(), (limit, vgg19)


@pytest.mark.parametrize("uploader", uploaders(), ids=lambda u: u.where)
def test_stated_upload_limits_agree_with_the_real_ones(uploader: Uploader) -> None:
    stated = [float(n) for n in LIMIT_IN_TEXT.findall(uploader.help or "")]
    if uploader.own_limit is not None or uploader.key in (IMAGE_UPLOADER_KEY, WEIGHTS_UPLOADER_KEY):
        assert stated, f"{uploader.where}: an uploader with a limit of its own says nothing about it"
    real = uploader.own_limit if uploader.own_limit is not None else server_limit()
    source = (
        "its max_upload_size" if uploader.own_limit is not None else "server.maxUploadSize in .streamlit/config.toml"
    )
    for n in stated:
        assert n == real, f"{uploader.where}: help says {n:g} MB but {source} is {real:g} MB ({uploader.help!r})"
    if not stated:  # e.g. the labels file: no limit of its own and none claimed
        assert uploader.own_limit is None


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


def test_no_full_garbage_collection_after_every_rerun() -> None:
    """Streamlit's default walks every object after every rerun: ~300 ms with torch loaded, more than
    the page itself. Reference counting frees what a rerun drops; Python's collector keeps its thresholds."""
    assert config().get("runner", {}).get("postScriptGC", True) is False


def test_the_servers_long_lived_objects_are_frozen_out_of_the_collector() -> None:
    """Once the dashboard's modules are imported, the collector no longer walks them (``gc.freeze``):
    a full collection then walks a small fraction of the ~0.5 M objects of torch and Streamlit."""
    import os
    import subprocess
    import sys

    code = "import gc, ui.resources\nprint(gc.get_freeze_count(), len(gc.get_objects()))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    frozen, walked = (int(v) for v in out.stdout.split())
    assert frozen > 100_000, frozen
    assert walked < frozen / 10, (walked, frozen)
