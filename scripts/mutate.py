"""Mutation harness: plant known bugs, one at a time, and check that the tests meant to catch them fail.

Run by hand (not in CI; it takes a while)::

    python scripts/mutate.py            # every planted bug
    python scripts/mutate.py --list     # what is planted where
    python scripts/mutate.py fifo vit   # only the bugs whose name contains one of these words

Each bug is a literal text replacement in one source file. For each, the project tree is copied to
a temporary folder, the replacement is made there (the working tree is never touched), and
``python -m pytest <its tests> -x -q -p no:cacheprovider`` runs in the copy. The bug is *killed*
when that run fails, *survived* when it passes. A replacement whose old text is not found exactly
once is reported as *stale* (the source moved on; update the list) and counts as a failure of the
harness, not of the tests. Exit code 0 only when every bug was killed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".hypothesis", "*.pyc", "out", ".venv")


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str = ""


MUTANTS: tuple[Mutant, ...] = (
    # ---- the shared model is never changed, not even for a moment ----------------------------
    Mutant(
        "requires-grad-during-forward", "explain/model.py",
        "            torch.set_grad_enabled(False)\n            logits = self.module(inputs)\n",
        "            torch.set_grad_enabled(False)\n            for p in self.module.parameters():\n"
        "                p.requires_grad_(True)\n            try:\n                logits = self.module(inputs)\n"
        "            finally:\n                for p in self.module.parameters():\n"
        "                    p.requires_grad_(False)\n",
        ("tests/test_engine_spies.py",),
        "parameters made to require gradients during the forward pass, reset in finally",
    ),
    Mutant(
        "hook-during-forward", "explain/model.py",
        "            torch.set_grad_enabled(False)\n            logits = self.module(inputs)\n",
        "            torch.set_grad_enabled(False)\n            _h = target.register_forward_hook(lambda *a: None)\n"
        "            try:\n                logits = self.module(inputs)\n            finally:\n                _h.remove()\n",
        ("tests/test_engine_spies.py",),
        "a forward hook registered for the capture and removed afterwards",
    ),
    Mutant(
        "train-eval-toggle", "explain/model.py",
        "            torch.set_grad_enabled(False)\n            logits = self.module(inputs)\n",
        "            torch.set_grad_enabled(False)\n            self.module.eval()\n            logits = self.module(inputs)\n",
        ("tests/test_engine_spies.py",),
        "the shared module's eval() called on every capture (flips every training flag)",
    ),
    Mutant(
        "param-grad-written", "explain/model.py",
        "            torch.set_grad_enabled(False)\n            logits = self.module(inputs)\n",
        "            torch.set_grad_enabled(False)\n            _p = next(self.module.parameters())\n"
        "            _p.grad = torch.zeros_like(_p)\n            try:\n                logits = self.module(inputs)\n"
        "            finally:\n                _p.grad = None\n",
        ("tests/test_engine_spies.py",),
        "a parameter's .grad written during the forward pass and cleared again",
    ),
    Mutant(
        "one-backward-per-class", "explain/model.py",
        "        try:\n            (g,) = torch.autograd.grad(\n"
        "                self.logits, self._leaf, grad_outputs=onehot, retain_graph=True, is_grads_batched=True\n"
        "            )\n            return g\n        except RuntimeError:",
        "        try:\n            raise RuntimeError('no batching')\n        except RuntimeError:",
        ("tests/test_engine_spies.py",),
        "one backward per class instead of one batched backward",
    ),
    # ---- the capture cache ---------------------------------------------------------------------
    Mutant(
        "fifo-eviction", "explain/model.py",
        "            if hit is not None:\n                self._captures.move_to_end(key)\n",
        "            if hit is not None:\n",
        ("tests/test_engine_cache.py",),
        "first in, first out instead of least recently used",
    ),
    Mutant(
        "gradients-not-charged", "explain/model.py",
        "                    added += tensor_bytes(g)\n", "                    added += 0\n",
        ("tests/test_engine_cache.py",),
        "per-class gradients held but never charged to the budget",
    ),
    Mutant(
        "extras-not-charged", "explain/model.py",
        "            owner._grow(tensor_bytes(value) - old)\n", "            owner._grow(0)\n",
        ("tests/test_engine_cache.py",),
        "Score-CAM's extras held but never charged",
    ),
    Mutant(
        "no-eviction-on-growth", "explain/model.py",
        "                self._captures.move_to_end(key)  # it is in use right now\n                self._evict_locked()\n",
        "                pass\n",
        ("tests/test_engine_cache.py",),
        "growth counted but the cache not evicted on it",
    ),
    # ---- methods -------------------------------------------------------------------------------
    Mutant(
        "gradcampp-sum-as-mean", "explain/methods.py",
        "sum_a = cap.activation.sum(dim=(1, 2))[None, :, None, None]",
        "sum_a = cap.activation.mean(dim=(1, 2))[None, :, None, None]",
        ("tests/test_engine_reference.py",),
        "Grad-CAM++'s Σ A term replaced by a mean",
    ),
    Mutant(
        "vit-token-grid-transposed", "explain/layers.py",
        "reshape(t.shape[0], h, w, c).permute(0, 3, 1, 2)",
        "reshape(t.shape[0], h, w, c).permute(0, 3, 2, 1)",
        ("tests/test_engine_reference.py",),
        "ViT's token grid transposed (h and w swapped)",
    ),
    Mutant(
        "swin-grid-transposed", "explain/layers.py",
        "        return t.permute(0, 3, 1, 2)\n", "        return t.permute(0, 3, 2, 1)\n",
        ("tests/test_engine_reference.py",),
        "Swin's channels-last grid transposed",
    ),
    # ---- the app -------------------------------------------------------------------------------
    Mutant(
        "sidebar-selection-global", "ui/state.py",
        "    sel = st.session_state.get(SELECTION)\n    return sel if isinstance(sel, Selection) else None\n"
        "\n\ndef store(sel: Selection | None) -> None:\n"
        "    \"\"\"Publish this run's selection for the page (``None`` clears it).\"\"\"\n"
        "    st.session_state[SELECTION] = sel\n",
        "    sel = _LAST.get(SELECTION)\n    return sel if isinstance(sel, Selection) else None\n"
        "\n\n_LAST: dict = {}\n\n\ndef store(sel: Selection | None) -> None:\n"
        "    \"\"\"Publish this run's selection for the page (``None`` clears it).\"\"\"\n"
        "    _LAST[SELECTION] = sel\n",
        ("tests/test_app_sessions.py",),
        "the sidebar's selection kept in a process-wide global",
    ),
    Mutant(
        "get-model-returns-upload", "ui/resources.py",
        "    if mine is not None and mine.name == name:\n        return mine.model\n",
        "    if mine is not None:\n        return mine.model\n",
        ("tests/test_app_sessions.py",),
        "get_model returning the uploaded model whatever name is asked for",
    ),
    Mutant(
        "link-carries-private-model", "ui/share.py",
        "    uploaded_model = mine is not None and mine.name == sel.model_name\n    is_sample",
        "    uploaded_model = False\n    is_sample",
        ("tests/test_app_sessions.py",),
        "share links carrying a private model's name, classes and layers",
    ),
    Mutant(
        "pickle-refusal-without-import", "explain/custom.py",
        "            what = f\" ({', '.join(foreign[:3])})\"\n", "            what = \"\"\n",
        ("tests/test_custom.py::test_code_carrying_pickle_is_refused_and_never_runs",
         "tests/test_app_own_model.py::test_code_carrying_pickle_is_refused_and_never_runs"),
        "the code-carrying pickle refused without naming the import it asked for",
    ),
    Mutant(
        "report-blank-tiles", "explain/render.py",
        "        sheet.paste(t.convert(\"RGB\").resize((tile, tile)), (x, y))\n",
        "        if i % 2 == 0:\n            sheet.paste(t.convert(\"RGB\").resize((tile, tile)), (x, y))\n",
        ("tests/test_app_share.py::test_report_of_compare_classes", "tests/test_app_share.py::test_report_of_compare_methods",
         "tests/test_app_share.py::test_report_of_explain_includes_matching_faithfulness_scores"),
        "blank tiles in the report's PNG grid",
    ),
    Mutant(
        "page-guard-removed", "pages/explain.py",
        "with page.guard(\"explaining the image\"):\n", "if True:\n",
        ("tests/test_app_guard.py",),
        "the page guard removed",
    ),
    Mutant(
        "image-size-check-removed", "explain/io.py",
        "    if len(data) > max_bytes:\n", "    if False:\n",
        ("tests/test_io.py", "tests/test_config.py"),
        "pictures no longer limited by the app's own size check",
    ),
    Mutant(
        "server-upload-limit-20mb", ".streamlit/config.toml",
        "maxUploadSize = 600\n", "maxUploadSize = 20\n",
        ("tests/test_config.py",),
        "the server's upload limit back at 20 MB",
    ),
    Mutant(
        "uploaded-model-shared", "ui/resources.py",
        "    mine = st.session_state.get(UPLOADED_KEY)\n",
        "    mine = st.session_state.get(UPLOADED_KEY)\n    last = uploaded_model.__dict__.setdefault('last', [None])\n"
        "    if isinstance(mine, UploadedModel):\n        last[0] = mine\n    mine = last[0]\n",
        ("tests/test_app_sessions.py::test_two_sessions_each_with_their_own_uploaded_model",),
        "the last uploaded model offered to every session",
    ),
    Mutant(
        "page-link-carries-private-classes", "ui/share.py",
        "    uploaded_model = mine is not None and sel is not None and mine.name == sel.model_name\n",
        "    uploaded_model = False\n",
        ("tests/test_app_sessions.py::test_links_never_carry_a_private_models_name_classes_or_layers",),
        "the compare pages' links carrying a private model's classes and layers",
    ),
    Mutant(
        "link-may-name-any-model", "ui/share.py",
        "    value = _choice(link, MODEL, list(resources.model_infos()), \"model\")\n",
        "    value = link.take(MODEL)\n",
        ("tests/test_app_sessions.py::test_a_link_naming_an_uploaded_model_is_ignored_with_a_warning",),
        "a link's model accepted whatever it names (an uploaded model silently dropped)",
    ),
    Mutant(
        "guard-catches-nothing", "ui/page.py",
        "    except Exception as exc:  # noqa: BLE001 - the whole point: no traceback reaches the page\n",
        "    except ArithmeticError as exc:\n",
        ("tests/test_app_guard.py",),
        "the guard itself letting unexpected errors through",
    ),
    Mutant(
        "explain-page-ignores-method", "ui/compute.py",
        "    method = method or sel.method\n", "    method = method or \"gradcam\"\n",
        ("tests/test_app.py::test_display_class_and_method_changes_reuse_the_forward_pass",),
        "the Explain page drawing Grad-CAM whatever method is chosen (its heading still right)",
    ),
    Mutant(
        "scorecam-without-progress-bar", "ui/compute.py",
        "                            progress=progress, **kw)", "                            **kw)",
        ("tests/test_app.py::test_digit_model_gets_a_digit_its_layer_and_its_class",),
        "Score-CAM run without updating its progress bar",
    ),
    Mutant(
        "corrupt-weights-not-moved-aside", "explain/registry.py",
        "            os.replace(path, aside)\n", "            pass\n",
        ("tests/test_app_weights.py",),
        "a corrupt cached checkpoint left in place (every later attempt fails again)",
    ),
    Mutant(
        "no-per-key-lock", "explain/model.py",
        "            with key_lock:  # two sessions asking for the same capture wait for one forward pass\n",
        "            if key_lock:\n",
        ("tests/test_engine_safety.py::test_concurrent_requests_for_one_capture_share_one_forward",),
        "two sessions asking for one capture at once each run the forward pass",
    ),
)


def apply(tree: pathlib.Path, m: Mutant) -> str | None:
    """Make the replacement in ``tree``; the reason it cannot be made, or None."""
    path = tree / m.file
    if not path.exists():
        return f"{m.file} does not exist"
    text = path.read_text(encoding="utf-8")
    count = text.count(m.old)
    if count != 1:
        return f"old text found {count} times in {m.file}"
    path.write_text(text.replace(m.old, m.new), encoding="utf-8")
    return None


def run_one(m: Mutant, timeout: float) -> tuple[str, float, str]:
    """('killed' | 'survived' | 'stale' | 'timeout', seconds, last output lines)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        tree = pathlib.Path(tmp) / "project"
        shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
        problem = apply(tree, m)
        if problem:
            return "stale", 0.0, problem
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        cmd = [sys.executable, "-m", "pytest", *m.tests, "-x", "-q", "-p", "no:cacheprovider"]
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - start, ""
        took = time.monotonic() - start
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(lines[-3:])
        if proc.returncode == 5:  # no tests collected: not a kill
            return "stale", took, "no tests ran: " + tail
        if proc.returncode == 0:
            return "survived", took, tail
        # Name the test that caught it: a collection error would be a kill for the wrong reason.
        caught = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
        return "killed", took, (caught[0] if caught else tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="run only bugs whose name contains one of these words")
    parser.add_argument("--list", action="store_true", help="list the planted bugs and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per bug (default 900)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(w in m.name for w in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {m.file:24} {' '.join(m.tests)}\n{'':34} {m.why}")
        return 0
    results = []
    for i, m in enumerate(chosen, 1):
        verdict, took, tail = run_one(m, args.timeout)
        results.append((m, verdict))
        print(f"[{i}/{len(chosen)}] {verdict:8} {m.name} ({took:.0f} s)", flush=True)
        if tail:
            print("    " + tail.replace("\n", "\n    ")[:400], flush=True)
    killed = sum(v == "killed" for _m, v in results)
    print(f"\n{killed} / {len(results)} planted bugs killed")
    for m, v in results:
        if v != "killed":
            print(f"  {v}: {m.name} ({m.file}) - {m.why}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
