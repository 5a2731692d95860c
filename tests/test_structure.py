"""Structure rules (issue 9), read from the sources with ``ast`` so that they are instant:

* no file outside ``explain/methods.py`` names a method with a string literal;
* ``explain/`` and ``ui/`` have no import cycle;
* pages (and app.py, and ui/) use only ``explain``'s public names;
* only ``ui/streamlit_compat.py`` imports Streamlit internals, and that internal still exists.

Plus: a throw-away method and model family registered in a fixture show up in the CLI and in the
dashboard's pickers without touching any other file.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import explain

REPO = pathlib.Path(__file__).resolve().parent.parent
METHODS_MODULE = REPO / "explain" / "methods.py"
COMPAT_MODULE = REPO / "ui" / "streamlit_compat.py"
PROJECT = sorted([REPO / "app.py", *(REPO / "explain").rglob("*.py"), *(REPO / "ui").glob("*.py"),
                  *(REPO / "pages").glob("*.py")])
FRONT = sorted([REPO / "app.py", *(REPO / "ui").glob("*.py"), *(REPO / "pages").glob("*.py")])
PUBLIC_STREAMLIT = {"streamlit", "streamlit.testing.v1"}


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def method_literals(path: pathlib.Path, names: set[str]) -> list[str]:
    """``file:line 'name'`` for each string literal (not a docstring) equal to a method's name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value.strip().lower() in names:
                found.append(f"{rel(path)}:{node.lineno} {node.value!r}")
    return found


def test_no_file_outside_the_methods_module_names_a_method() -> None:
    names = {m.name for m in explain.all_methods()} | {a for m in explain.all_methods() for a in m.aliases}
    found = [hit for p in PROJECT if p != METHODS_MODULE for hit in method_literals(p, names)]
    assert not found, "method names spelled outside explain/methods.py: " + ", ".join(found)


def test_the_method_literal_check_bites(tmp_path: pathlib.Path) -> None:
    planted = tmp_path / "page.py"
    planted.write_text('"""Docstrings may say gradcam."""\nif sel.method == "scorecam":\n    pass\n')
    assert method_literals(planted, {"scorecam", "gradcam"}) == ["page.py:2 'scorecam'"]


# ---- imports ---------------------------------------------------------------------------------------


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (function-level imports too; not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def graph(package: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (REPO / package).rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in files and i != m} for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    return found


@pytest.mark.parametrize("package", ["explain", "ui"])
def test_no_import_cycles(package: str) -> None:
    # A package importing its own submodules from __init__ is no cycle; a submodule importing the
    # package's __init__ is (the graph has both as nodes).
    g = graph(package)
    g[package] = set()  # __init__ re-exports its submodules by design
    assert not cycles(g), f"import cycles in {package}/: {cycles(g)}"


def test_the_cycle_finder_bites() -> None:
    assert cycles({"ui.share": {"ui.widgets"}, "ui.widgets": {"ui.share"}})


def public_use_violations(path: pathlib.Path) -> list[str]:
    """Uses of non-public engine names: ``from explain.x import``, ``from explain import _y``, ``explain.z``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    public = set(explain.__all__)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("explain"):
            if node.module != "explain":
                bad.append(f"{rel(path)}:{node.lineno} from {node.module} import …")
            else:
                bad += [f"{rel(path)}:{node.lineno} {a.name}" for a in node.names if a.name not in public]
        elif isinstance(node, ast.Import):
            bad += [f"{rel(path)}:{node.lineno} import {a.name}" for a in node.names
                    if a.name.startswith("explain.")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "explain":
            if node.attr not in public:
                bad.append(f"{rel(path)}:{node.lineno} explain.{node.attr}")
    return bad


def test_pages_and_ui_use_only_public_engine_names() -> None:
    bad = [b for p in FRONT for b in public_use_violations(p)]
    assert not bad, "non-public engine names used by the dashboard: " + ", ".join(bad)


def test_the_public_name_check_bites(tmp_path: pathlib.Path) -> None:
    planted = tmp_path / "p.py"
    planted.write_text("import explain\nfrom explain.render import overlay\nx = explain._run\ny = explain.explain\n")
    assert len(public_use_violations(planted)) == 2


def streamlit_internal_imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        out += [f"{rel(path)}:{node.lineno} {n}" for n in names
                if n.startswith("streamlit") and n not in PUBLIC_STREAMLIT]
    return out


def test_only_one_module_touches_streamlit_internals() -> None:
    users = [hit for p in PROJECT if p != COMPAT_MODULE for hit in streamlit_internal_imports(p)]
    assert not users, "Streamlit internals imported outside ui/streamlit_compat.py: " + ", ".join(users)
    assert streamlit_internal_imports(COMPAT_MODULE), "the compat module no longer imports what it works around"


def test_the_streamlit_internal_we_rely_on_still_exists() -> None:
    """Fails loudly when a Streamlit upgrade moves or renames the legacy multipage-mode flag."""
    from ui import streamlit_compat

    assert streamlit_compat.PagesManager is not None, "streamlit.runtime.pages_manager.PagesManager is gone"
    assert hasattr(streamlit_compat.PagesManager, streamlit_compat.LEGACY_FLAG), (
        f"PagesManager.{streamlit_compat.LEGACY_FLAG} is gone: re-check how a pages/ folder switches "
        "Streamlit into legacy multipage mode (see ui/streamlit_compat.py)"
    )


def test_streamlit_control_flow_passes_through_the_page_guard() -> None:
    """The guard catches ``Exception``; Streamlit's rerun/stop must not be one, or it would be swallowed."""
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

    assert not issubclass(StopException, Exception) and not issubclass(RerunException, Exception)


# ---- plug-ins: one class, one spec, nothing else touched ---------------------------------------------


class _Centre(explain.Method):
    """A throw-away method for the test: the activation's channel mean (weights 1/C)."""

    name, title = "centre_test", "Centre (test)"
    summary = "The mean of the feature maps (a test method)."
    needs_gradients = False
    class_specific = False

    def weights(self, model, cap, classes, grads):
        import torch

        c = cap.activation.shape[0]
        return torch.full((len(classes), c), 1.0 / c)


def _tiny_build(weights, progress):
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 3))
    pre = explain.Preprocess(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return explain.Built(module, ["red", "green", "blue"], pre)


@pytest.fixture()
def plugins():
    """Register a throw-away method and model family, and remove them afterwards."""
    explain.register_method(_Centre())
    explain.register_model(explain.ModelSpec(name="tiny_test", source="test", description="a test family",
                                             load=_tiny_build, default_sample="digit_7.png"))
    try:
        yield
    finally:
        explain.unregister_method(_Centre.name)
        from explain import families

        families.unregister("tiny_test")


def test_a_registered_method_and_model_work_in_the_engine_and_the_cli(plugins, tmp_path, capsys) -> None:
    from explain import cli

    assert "centre_test" in explain.method_names() and "centre_test" in explain.METHODS
    assert "tiny_test" in explain.model_names()
    m = explain.load_model("tiny_test")
    assert m.default_sample == "digit_7.png"
    cli.build_parser().print_help()
    assert "centre_test" in capsys.readouterr().out
    code = cli.main([str(explain.SAMPLES_DIR / "rocket.jpg"), "--model", "tiny_test", "--method", "Centre_Test",
                     "--out", str(tmp_path)])
    assert code == 0
    import json

    summary = json.loads((tmp_path / "rocket.json").read_text())
    assert summary["method"] == "centre_test" and summary["model"] == "tiny_test"


def test_a_registered_method_and_model_appear_in_the_dashboard_pickers(plugins) -> None:
    from app_helpers import new_app, run_ok, widget

    from ui import state

    at = run_ok(new_app())
    assert "centre_test" in widget(at, "selectbox", state.METHOD).options or \
        "Centre (test)" in widget(at, "selectbox", state.METHOD).options
    assert any("tiny_test" in o for o in widget(at, "selectbox", state.MODEL).options)
    widget(at, "selectbox", state.MODEL).set_value("tiny_test")
    run_ok(at)
    widget(at, "selectbox", state.METHOD).set_value("centre_test")
    run_ok(at)
    assert widget(at, "selectbox", state.SAMPLE).value == "digit_7.png"  # the family's own default sample
    assert any("Centre (test)" in md.value for md in at.markdown)


def images_not_sent_as_png(path: pathlib.Path) -> list[str]:
    """``.image(...)`` calls without ``output_format="PNG"`` (Streamlit would re-encode them as JPEG)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "image":
            fmt = {k.arg: k.value for k in node.keywords}.get("output_format")
            if not (isinstance(fmt, ast.Constant) and fmt.value == "PNG"):
                bad.append(f"{rel(path)}:{node.lineno}")
    return bad


def test_every_page_picture_is_sent_as_png() -> None:
    bad = [b for p in FRONT for b in images_not_sent_as_png(p)]
    assert not bad, "pictures that Streamlit would re-encode as JPEG (use ui.pictures.show): " + ", ".join(bad)


def test_the_png_check_bites(tmp_path: pathlib.Path) -> None:
    planted = tmp_path / "p.py"
    planted.write_text('st.image(x, output_format="PNG")\ncol.image(y, caption="c")\n')
    assert images_not_sent_as_png(planted) == ["p.py:2"]
