"""Engine benchmark: what does an explanation cost, as a multiple of one plain forward pass?

    python bench/engine.py [--quick] [--device cpu|cuda] [--json PATH] [--profile]

For efficientnet_lite0 (real weights) and resnet50 (random weights; only the cost matters here)
it times, on one 224×224 input:

* the baseline: a plain ``torch.no_grad()`` forward of a hook-free copy of the model (and, for
  the PIL path, ``Model.view_and_tensor`` + that forward);
* ours, always FRESH (``m.clear_cache()`` first, so the forward is included): ``m.capture`` +
  ``get_method(...).maps`` from the tensor, and the full ``explain.explain`` from a PIL image;
* peers, where importable, the way their users call them: pytorch-grad-cam 1.5.7, TorchCAM 0.5.0
  and Captum's LayerGradCam, each on its own deep copy of the same weights (their hooks never
  touch our model), one call per class, and also with a batch of copies where that is simple.

Every case runs in one loop, in a shuffled order each round, and each run is paired with a run
of the baseline right before it, so load from other processes hits both alike. A case's figure is
the median of its (case time / paired baseline time) ratios; "best/best" (fastest case run over
fastest baseline run) is shown too, as the least noise-sensitive view of the intrinsic cost.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import explain
from explain.model import plain_copy

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "samples", "cat.jpg")

# Targets from the engine's design brief: ours / plain forward.
TARGET_ONE = 1.15
TARGET_EIGHT = 1.25
TARGET_CAM_ALL = 1.10

SLOW_CASE_S = 1.0  # cases slower than this (per call, after warm-up) get fewer repetitions
VERY_SLOW_CASE_S = 20.0  # cases slower than this are timed once (their first run, paired with a baseline)

ROW_ONE, ROW_EIGHT, ROW_L3, ROW_CAM = "1 class", "8 classes", "8 classes @ layer3", "CAM, 1000 classes"
PIL_SUFFIX = " (from PIL)"
PEERS = ("pytorch-grad-cam", "TorchCAM", "Captum")


@dataclass
class Case:
    """One timed thing: ``who`` (ours or a peer) computing ``row`` for one model."""

    model: str
    row: str
    who: str  # "baseline", "ours" or a peer name
    fn: Callable[[], object]
    variant: str = ""  # "" per-class calls; "batch" a batch of copies
    pil: bool = False  # compared with the PIL baseline
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # each run / the baseline run just before it
    reps: int = 0
    #: ``fn`` times one of ``scale`` equal units of the real call (a lower bound of a peer too slow
    #: to run whole on a shared CPU); figures are multiplied by it.
    scale: float = 1.0

    @property
    def key(self) -> str:
        v = f" [{self.variant}]" if self.variant else ""
        p = PIL_SUFFIX if self.pil else ""
        return f"{self.model} | {self.row}{p} | {self.who}{v}"

    @property
    def median(self) -> float:
        return statistics.median(self.times) * self.scale

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) * self.scale


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _peer_copy(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A hook-free copy whose parameters require grad, as the peers expect of a user's model."""
    peer = plain_copy(module)  # without our taps; peers add their own hooks
    for p in peer.parameters():
        p.requires_grad_(True)
    return peer.to(device).eval()


def _plain_copy(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    plain = plain_copy(module)
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain.to(device).eval()


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(model.named_modules())[name]


def build_cases(
    m: explain.Model,
    layers: dict[str, str],
    device: torch.device,
    cleanup: list[Callable[[], None]],
    peers: bool = False,
) -> tuple[list[Case], dict[str, object]]:
    """The baseline and our cases of one model (or, ``peers=True``, the peers' cases), plus facts
    for the report (layer names, classes, agreement of the peers' maps with ours)."""
    name = m.name
    size = m.preprocess.input_size
    pil = Image.open(SAMPLE).convert("RGB").resize((size, size), Image.BICUBIC)
    _, x = m.view_and_tensor(pil)
    with torch.no_grad():
        probs = m.predict(x)[0]
    classes8 = [int(i) for i in torch.topk(probs, 8).indices]
    one = classes8[:1]
    all_classes = list(range(m.num_classes))
    default = layers["default"]
    plain = _plain_copy(m.module, device) if not peers else None

    def forward() -> object:
        with torch.no_grad():
            return plain(x)

    def forward_pil() -> object:
        _, t = m.view_and_tensor(pil)
        with torch.no_grad():
            return plain(t)

    def ours(method: str, layer: str, cls: list[int]) -> Callable[[], object]:
        meth = explain.get_method(method)

        def run() -> object:
            m.clear_cache()
            cap = m.capture(x, layer)
            return meth.maps(m, cap, cls)

        return run

    def ours_pil(method: str, layer: str, cls: list[int]) -> Callable[[], object]:
        def run() -> object:
            m.clear_cache()
            return explain.explain(m, pil, targets=cls, layer=layer, method=method)

        return run

    cases = [
        Case(name, "forward", "baseline", forward),
        Case(name, "forward", "baseline", forward_pil, pil=True),
        Case(name, ROW_ONE, "ours", ours("gradcam", default, one)),
        Case(name, ROW_EIGHT, "ours", ours("gradcam", default, classes8)),
        Case(name, ROW_ONE, "ours", ours_pil("gradcam", default, one), pil=True),
        Case(name, ROW_EIGHT, "ours", ours_pil("gradcam", default, classes8), pil=True),
    ]
    cam_ok = True
    try:
        explain.get_method("cam").check(m, default)
    except explain.MethodNotApplicableError:
        cam_ok = False
    if cam_ok:
        cases += [
            Case(name, ROW_CAM, "ours", ours("cam", default, all_classes)),
            Case(name, ROW_CAM, "ours", ours_pil("cam", default, all_classes), pil=True),
        ]
    if "layer3" in layers:
        cases.append(Case(name, ROW_L3, "ours", ours("gradcam", layers["layer3"], classes8)))
    facts: dict[str, object] = {"layers": layers, "classes8": classes8, "agreement": {}}
    if not peers:
        return cases, facts
    cases = []

    rows = [(ROW_ONE, default, one), (ROW_EIGHT, default, classes8)]
    if "layer3" in layers:
        rows.append((ROW_L3, layers["layer3"], classes8))
    x8 = x.expand(8, -1, -1, -1).contiguous()

    # ---- pytorch-grad-cam ----------------------------------------------------------------------
    try:
        from pytorch_grad_cam import GradCAM as PgcGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:  # pragma: no cover - depends on the environment
        print(f"  pytorch-grad-cam not importable ({exc}); skipped")
    else:
        for row, layer, cls in rows:
            peer = _peer_copy(m.module, device)
            cam = PgcGradCAM(model=peer, target_layers=[_module(peer, layer)])
            cleanup.append(cam.activations_and_grads.release)

            def pgc_each(cam=cam, cls=cls) -> object:
                return [cam(input_tensor=x, targets=[ClassifierOutputTarget(c)]) for c in cls]

            cases.append(Case(name, row, "pytorch-grad-cam", pgc_each))
            if len(cls) > 1:
                def pgc_batch(cam=cam, cls=cls) -> object:
                    return cam(input_tensor=x8, targets=[ClassifierOutputTarget(c) for c in cls])

                cases.append(Case(name, row, "pytorch-grad-cam", pgc_batch, variant="batch"))

    # ---- TorchCAM ------------------------------------------------------------------------------
    try:
        from torchcam.methods import CAM as TcCAM
        from torchcam.methods import GradCAM as TcGradCAM
    except ImportError as exc:  # pragma: no cover
        print(f"  TorchCAM not importable ({exc}); skipped")
    else:
        for row, layer, cls in rows:
            peer = _peer_copy(m.module, device)
            ext = TcGradCAM(peer, target_layer=layer)
            cleanup.append(ext.remove_hooks)

            def tc_each(peer=peer, ext=ext, cls=cls) -> object:
                scores = peer(x)
                # Every call but the last needs the graph again.
                return [ext(c, scores, retain_graph=i < len(cls) - 1) for i, c in enumerate(cls)]

            cases.append(Case(name, row, "TorchCAM", tc_each))
            if len(cls) > 1:
                def tc_batch(peer=peer, ext=ext, cls=cls) -> object:
                    return ext(list(cls), peer(x8))

                cases.append(Case(name, row, "TorchCAM", tc_batch, variant="batch"))
            if row == ROW_ONE:
                ours_map = ours("gradcam", default, one)()
                theirs = tc_each()[0][0]
                facts["agreement"]["TorchCAM Grad-CAM"] = _agreement(ours_map, theirs)
        if cam_ok:
            peer = _peer_copy(m.module, device)
            fc = m.layer_info(default).cam_linear
            ext_cam = TcCAM(peer, target_layer=default, fc_layer=fc)
            cleanup.append(ext_cam.remove_hooks)

            def tc_cam_all(peer=peer, ext=ext_cam) -> object:
                with torch.no_grad():
                    scores = peer(x)
                return [ext(c, scores) for c in all_classes]

            cases.append(Case(name, ROW_CAM, "TorchCAM", tc_cam_all))
            facts["agreement"]["TorchCAM CAM"] = _agreement(ours("cam", default, one)(), tc_cam_all()[one[0]][0])

    # ---- Captum --------------------------------------------------------------------------------
    try:
        from captum.attr import LayerGradCam
    except ImportError as exc:  # pragma: no cover
        print(f"  Captum not importable ({exc}); skipped")
    else:
        for row, layer, cls in rows:
            peer = _peer_copy(m.module, device)  # Captum's hooks live only during a call; a copy anyway
            lgc = LayerGradCam(peer, _module(peer, layer))

            def cap_each(lgc=lgc, cls=cls) -> object:
                return [lgc.attribute(x, target=c, relu_attributions=True) for c in cls]

            cases.append(Case(name, row, "Captum", cap_each))
            if len(cls) > 1:
                def cap_batch(lgc=lgc, cls=cls) -> object:
                    return lgc.attribute(x8, target=list(cls), relu_attributions=True)

                cases.append(Case(name, row, "Captum", cap_batch, variant="batch"))
            if row == ROW_ONE:
                facts["agreement"]["Captum LayerGradCam"] = _agreement(
                    ours("gradcam", default, one)(), cap_each()[0][0, 0]
                )
    return cases, facts


def _agreement(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest difference of the two maps after min-max scaling each (0: the same picture)."""
    a = ours.detach().float().cpu().reshape(-1)
    b = theirs.detach().float().cpu().reshape(-1)

    def scale(t: torch.Tensor) -> torch.Tensor:
        return (t - t.min()) / (t.max() - t.min() + 1e-12)

    return float((scale(a) - scale(b)).abs().max())


def measure(cases: list[Case], reps: int, device: torch.device) -> None:
    """Warm up, then run every case ``reps`` times (slow ones fewer), shuffled each round.

    Each run of a case is PAIRED with a run of its model's baseline right before it, so a burst
    of load from other processes hits both; a case's ratio is the median of its paired ratios.
    """
    sync = _sync(device)

    def timed(fn: Callable[[], object]) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    bases = {(c.model, c.pil): c for c in cases if c.who == "baseline"}
    work = [c for c in cases if c.who != "baseline"]
    for b in bases.values():
        timed(b.fn)
        timed(b.fn)
    for c in work:
        tb = timed(bases[(c.model, c.pil)].fn)
        first = timed(c.fn)  # warm-up: allocator, lazy init, the peers' caches
        if first > VERY_SLOW_CASE_S:
            # Minutes per run (pytorch-grad-cam's Ablation-CAM of resnet50): this one run is the figure.
            c.times, c.ratios, c.reps = [first], [first / tb], 0
            continue
        if first < SLOW_CASE_S:
            timed(c.fn)
        c.reps = reps if first < SLOW_CASE_S else max(3, reps // 4)
    rng = random.Random(0)
    for i in range(reps):
        order = [c for c in work if i < c.reps]
        rng.shuffle(order)
        gc.collect()
        for c in order:
            b = bases[(c.model, c.pil)]
            tb = timed(b.fn)
            b.times.append(tb)
            t = timed(c.fn)
            c.times.append(t)
            c.ratios.append(t / tb)
        print(f"\r  round {i + 1}/{reps}", end="", flush=True)
    print()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def report(cases: list[Case], facts: dict[str, dict]) -> dict:
    """Print per-model tables and the README table; return the numbers."""
    out: dict = {"models": {}}
    md_rows: list[str] = []
    for model in dict.fromkeys(c.model for c in cases):
        mc = [c for c in cases if c.model == model]
        base = next(c for c in mc if c.who == "baseline" and not c.pil)
        base_pil = next(c for c in mc if c.who == "baseline" and c.pil)
        info = facts[model]
        print(f"\n== {model}  (default layer {info['layers']['default']}, classes {info['classes8']})")
        print(f"   plain forward: median {1000 * base.median:.1f} ms, best {1000 * min(base.times):.1f} ms;  "
              f"view_and_tensor + forward: median {1000 * base_pil.median:.1f} ms")
        for k, v in info["agreement"].items():
            print(f"   agreement with {k}: max |diff| of min-max-scaled maps = {v:.2e}")
        entry: dict = {"forward_ms": 1000 * base.median, "forward_best_ms": 1000 * min(base.times),
                       "forward_pil_ms": 1000 * base_pil.median, "layers": info["layers"],
                       "classes8": info["classes8"], "agreement": info["agreement"], "cases": {}}
        print(f"   {'case':<46}{'median ms':>10}{'ratio':>8}{'best/best':>10}  reps  target")
        for c in mc:
            if c.who == "baseline":
                continue
            b = base_pil if c.pil else base
            best = min(c.times) / min(b.times)
            target, ok = _target(c, mc, c.ratio)
            label = f"{c.row}{PIL_SUFFIX if c.pil else ''} | {c.who}{' [' + c.variant + ']' if c.variant else ''}"
            verdict = "" if target == "" else f"  {target}  {'ok' if ok else 'MISSED'}"
            print(f"   {label:<46}{1000 * c.median:>10.1f}{c.ratio:>7.2f}x{best:>9.2f}x {len(c.times):>4}{verdict}")
            entry["cases"][c.key] = {"ms": 1000 * c.median, "ratio": c.ratio, "best_ratio": best,
                                     "reps": len(c.times), "target": target, "met": ok if target else None}
        out["models"][model] = entry
        md_rows += _markdown_rows(model, mc)
    header = ["| case | ours | pytorch-grad-cam | TorchCAM | Captum | target |", "|---|---|---|---|---|---|"]
    print()
    print("\n".join(header + md_rows))
    out["markdown"] = header + md_rows
    return out


def _target(c: Case, mc: list[Case], ratio: float) -> tuple[str, bool]:
    if c.who != "ours":
        return "", True
    if c.row == ROW_ONE:
        return f"<= {TARGET_ONE}x", ratio <= TARGET_ONE
    if c.row == ROW_EIGHT:
        return f"<= {TARGET_EIGHT}x", ratio <= TARGET_EIGHT
    if c.row == ROW_CAM:
        return f"<= {TARGET_CAM_ALL}x", ratio <= TARGET_CAM_ALL
    if c.row == ROW_L3:
        tc = [p for p in mc if p.row == ROW_L3 and p.who == "TorchCAM"]
        if not tc:
            return "", True
        best = min(p.ratio for p in tc)
        return f"<= TorchCAM ({best:.2f}x)", c.ratio <= best
    return "", True


def _markdown_rows(model: str, mc: list[Case]) -> list[str]:
    rows = []
    for row in (ROW_ONE, ROW_EIGHT, ROW_L3, ROW_CAM):
        mine = [c for c in mc if c.row == row and c.who == "ours"]
        if not mine:
            continue
        ours_cell = " / ".join(f"{c.ratio:.2f}×" + (" (PIL)" if c.pil else "") for c in sorted(mine, key=lambda c: c.pil))
        peer_cells = []
        for who in PEERS:
            ps = [c for c in mc if c.row == row and c.who == who]
            parts = [f"{p.ratio:.2f}×" + (" (batch)" if p.variant else "") for p in ps]
            peer_cells.append(" / ".join(parts) or "–")
        target = {ROW_ONE: f"≤ {TARGET_ONE}×", ROW_EIGHT: f"≤ {TARGET_EIGHT}×", ROW_CAM: f"≤ {TARGET_CAM_ALL}×",
                  ROW_L3: "≤ TorchCAM"}[row]
        rows.append(f"| {model}: {row} | {ours_cell} | {' | '.join(peer_cells)} | {target} |")
    return rows


def breakdown(m: explain.Model, layers: dict[str, str], device: torch.device, reps: int = 30) -> None:
    """Where our time over a plain forward goes, part by part (best of ``reps`` interleaved runs).

    Uses two engine internals on purpose (the capture digest and the leaf of a capture): this is
    a diagnosis of the engine, not a use of it.
    """
    from explain.model import _digest

    sync = _sync(device)
    pil = Image.open(SAMPLE).convert("RGB").resize((m.preprocess.input_size,) * 2, Image.BICUBIC)
    _, x = m.view_and_tensor(pil)
    plain = _plain_copy(m.module, device)
    layer = layers["default"]
    cap = m.capture(x, layer)
    classes8 = [int(i) for i in torch.topk(cap.probs, 8).indices]
    gradcam, cam = explain.get_method("gradcam"), explain.get_method("cam")
    try:
        cam.check(m, layer)
        cam_ok = True
    except explain.MethodNotApplicableError:
        cam_ok = False

    def no_grad(module: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return module(x)
        return run

    def fresh_grads(k: int) -> Callable[[], object]:
        def run() -> object:
            cap.forget_gradients()  # the per-class gradient cache, so the backward runs again
            return gradcam.maps(m, cap, classes8[:k])
        return run

    def fresh_capture() -> object:
        m.clear_cache()
        return m.capture(x, layer)

    parts: dict[str, Callable[[], object]] = {
        "plain forward (no hooks)": no_grad(plain),
        "forward of the shared module (taps idle)": no_grad(m.module),
        "capture, fresh (digest + forward + Capture)": fresh_capture,
        "  digest of the input tensor": lambda: _digest(x),
        "  dict(module.named_modules())": lambda: dict(m.module.named_modules()),
        "Grad-CAM maps, 1 class (backward + map)": fresh_grads(1),
        "Grad-CAM maps, 8 classes (backward + map)": fresh_grads(8),
        "view_and_tensor (PIL at input size)": lambda: m.view_and_tensor(pil),
    }
    if cam_ok:
        parts["CAM maps, all classes"] = lambda: cam.maps(m, cap, list(range(m.num_classes)))
    best = {k: float("inf") for k in parts}
    for fn in parts.values():
        fn()
    for _ in range(reps):
        for k, fn in parts.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    base = best["plain forward (no hooks)"]
    print(f"\n-- where the time goes: {m.name} at {layer} (best of {reps}; % of a plain forward)")
    for k, v in best.items():
        print(f"   {k:<46}{1000 * v:>8.2f} ms {100 * v / base:>7.1f}%")


# ---- the methods of issue 11: each against a plain forward and the peers that have it ------------
NEW_PEERS = ("pytorch-grad-cam", "Captum")


def NEW_ROWS(cases: list[Case]) -> set[str]:  # noqa: N802 - reads like the row-name constants
    """The row names of the new-method cases (the old report must not see them)."""
    old = {ROW_ONE, ROW_EIGHT, ROW_L3, ROW_CAM, "forward"}
    return {c.row for c in cases if c.row not in old}


def build_new_method_cases(m: explain.Model, device: torch.device, cleanup: list[Callable[[], None]],
                           peers: bool = True, ablation_bound: bool = False) -> list[Case]:
    """Finer-CAM, Eigen-CAM, Ablation-CAM, SmoothGrad, Integrated Gradients and a contrast, one
    class at the default layer, fresh (our forward pass included); the peers with the same settings
    (pytorch-grad-cam's FinerCAM/EigenCAM/AblationCAM, Captum's IntegratedGradients and
    NoiseTunnel(Saliency)), each on its own copy of the weights."""
    M = explain.methods
    name = m.name
    size = m.preprocess.input_size
    pil = Image.open(SAMPLE).convert("RGB").resize((size, size), Image.BICUBIC)
    _, x = m.view_and_tensor(pil)
    with torch.no_grad():
        probs = m.predict(x)[0]
    top2 = [int(i) for i in torch.topk(probs, 2).indices]
    c = top2[0]
    layer = m.default_layer
    smooth = explain.get_method(M.SmoothGrad.name).options(None)
    steps = int(explain.get_method(M.IntegratedGradients.name).options(None)["steps"])
    sigma = float(smooth["noise"]) * float(x.max() - x.min())
    rows = {
        M.FinerCAM.name: "Finer-CAM", M.EigenCAM.name: "Eigen-CAM", M.AblationCAM.name: "Ablation-CAM",
        M.SmoothGrad.name: f"SmoothGrad ({int(smooth['samples'])} samples)",
        M.IntegratedGradients.name: f"Integrated Gradients ({steps} steps)",
    }

    def ours(method: str, contrast: int | None = None) -> Callable[[], object]:
        meth = explain.get_method(method)
        extra = {"contrast": contrast} if contrast is not None else {}

        def run() -> object:
            m.clear_cache()
            cap = m.capture(x, meth.capture_layer(m, layer))
            return meth.maps(m, cap, [c], options=meth.options(None), **extra)

        return run

    cases = [Case(name, row, "ours", ours(method)) for method, row in rows.items()]
    cases.append(Case(name, "Grad-CAM, A rather than B", "ours", ours(M.GradCAM.name, contrast=top2[1])))
    cases.append(Case(name, "Grad-CAM, A rather than B", "ours (plain Grad-CAM)", ours(M.GradCAM.name)))
    if not peers:
        return cases
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:  # pragma: no cover
        print(f"  pytorch-grad-cam not importable ({exc}); skipped")
    else:
        for cls, method in ((pgc.EigenCAM, M.EigenCAM.name), (pgc.AblationCAM, M.AblationCAM.name)):
            peer = _peer_copy(m.module, device)
            cam = cls(model=peer, target_layers=[_module(peer, layer)])
            cleanup.append(cam.activations_and_grads.release)
            if cls is pgc.AblationCAM and ablation_bound:
                # Its cost is at least one full no-grad forward of a batch of ``batch_size`` copies per
                # batch of channels (it re-runs the layers below each time): time that unit.
                channels = m.layer_info(layer).shape[0]
                xb = x.expand(cam.batch_size, -1, -1, -1).contiguous()

                def unit(peer=peer, xb=xb) -> object:
                    with torch.no_grad():
                        return peer(xb)

                cases.append(Case(name, rows[method], "pytorch-grad-cam", unit, variant="lower bound",
                                  scale=-(-channels // cam.batch_size)))
                continue
            cases.append(Case(name, rows[method], "pytorch-grad-cam",
                              lambda cam=cam: cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])))
        peer = _peer_copy(m.module, device)
        finer = pgc.FinerCAM(model=peer, target_layers=[_module(peer, layer)])
        cleanup.append(finer.base_cam.activations_and_grads.release)
        cases.append(Case(name, rows[M.FinerCAM.name], "pytorch-grad-cam",
                          lambda: finer(input_tensor=x, target_idx=c)))
    try:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    except ImportError as exc:  # pragma: no cover
        print(f"  Captum not importable ({exc}); skipped")
    else:
        base = M.IntegratedGradients.baseline(m, x)
        ig = IntegratedGradients(_peer_copy(m.module, device))
        cases.append(Case(name, rows[M.IntegratedGradients.name], "Captum",
                          lambda: ig.attribute(x, baselines=base, target=c, n_steps=steps, method="gausslegendre",
                                               internal_batch_size=M.IntegratedGradients.batch_size)))
        nt = NoiseTunnel(Saliency(_peer_copy(m.module, device)))
        cases.append(Case(name, rows[M.SmoothGrad.name], "Captum",
                          lambda: nt.attribute(x, nt_type="smoothgrad", nt_samples=int(smooth["samples"]),
                                               nt_samples_batch_size=M.SmoothGrad.batch_size, stdevs=sigma, target=c)))
    return cases


def report_new(cases: list[Case]) -> list[str]:
    """The README table of the new methods: each as a multiple of a plain forward."""
    header = ["| case (1 class, default layer) | ours | pytorch-grad-cam | Captum | ours vs the fastest peer |",
              "|---|---|---|---|---|"]
    lines = []
    base = {c.model: c for c in cases if c.who == "baseline" and not c.pil}
    for model in dict.fromkeys(c.model for c in cases):
        mc = [c for c in cases if c.model == model and c.who != "baseline"]
        for row in dict.fromkeys(c.row for c in mc):
            rc = [c for c in mc if c.row == row]
            mine = [c for c in rc if c.who == "ours"]
            if not mine:
                continue
            ours_c = mine[0]
            cells = []
            for who in NEW_PEERS:
                ps = [p for p in rc if p.who == who]
                cells.append(" / ".join(f"{'≥ ' if p.variant else ''}{p.ratio:.1f}×" for p in ps) or "–")
            peer = [p for p in rc if p.who in NEW_PEERS]
            plain = [p for p in rc if p.who == "ours (plain Grad-CAM)"]
            # From the paired ratios (each run over the forward just before it), not raw times, so
            # that load from other processes on a shared machine cancels out.
            if peer:
                fastest = min(peer, key=lambda p: p.ratio)
                vs = f"{'≥ ' if fastest.variant else ''}{fastest.ratio / ours_c.ratio:.1f}× faster"
            elif plain:
                vs = f"plain Grad-CAM: {plain[0].ratio:.2f}×"
            else:
                vs = "–"
            lines.append(f"| {model}: {row} | {ours_c.ratio:.2f}× | {' | '.join(cells)} | {vs} |")
        lines.append(f"| {model}: plain forward | {1000 * base[model].median:.0f} ms | | | |")
    print()
    print("\n".join(header + lines))
    return header + lines



def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (the numbers are the result, not a pass/fail)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (5 instead of 15)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of the fast cases (overrides --quick)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--models", default="efficientnet_lite0,resnet50", help="comma list (default: both)")
    p.add_argument("--json", metavar="PATH", help="also save the numbers as JSON")
    p.add_argument("--profile", action="store_true", help="also break our overhead over a plain forward down by part")
    p.add_argument("--new-methods", choices=("yes", "no", "only"), default="yes",
                   help="also time issue 11's methods against their peers (only: nothing else)")
    p.add_argument("--ablation-peer", choices=("full", "bound"), default="full",
                   help="pytorch-grad-cam's AblationCAM run whole, or its lower bound (its full forwards of "
                        "one batch, times the number of batches): minutes per call on a small CPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    reps = args.reps or (5 if args.quick else 15)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, {reps} repetitions")

    all_cases: list[Case] = []
    facts: dict[str, dict] = {}
    cleanup: list[Callable[[], None]] = []
    models: dict[str, tuple[explain.Model, dict[str, str]]] = {}
    for name in args.models.split(","):
        weights = "default" if name in ("efficientnet_lite0", "digits_lenet") else None
        m = explain.load_model(name, weights=weights, device=device)
        layers = {"default": m.default_layer}
        if name.startswith("resnet"):
            layers["layer3"] = "layer3"
        models[name] = (m, layers)
        cases, facts[name] = build_cases(m, layers, device, cleanup)
        if args.new_methods == "only":
            cases = [c for c in cases if c.who == "baseline"]
        all_cases += cases
    for c in all_cases:  # our cases run alone first, so that this RSS is the engine's own
        c.fn()
        c.fn()
    peak_ours = _peak_rss_mib()
    for name, (m, layers) in models.items():
        print(f"{name}: building the peers' cases ...")
        if args.new_methods != "only":
            cases, f = build_cases(m, layers, device, cleanup, peers=True)
            all_cases += cases
            facts[name]["agreement"] = f["agreement"]
        if args.new_methods != "no":
            all_cases += build_new_method_cases(m, device, cleanup, ablation_bound=args.ablation_peer == "bound")
    try:
        measure(all_cases, reps, device)
        result = report([c for c in all_cases if c.row not in NEW_ROWS(all_cases)], facts) \
            if args.new_methods != "only" else {"models": {}}
        if args.new_methods != "no":
            result["markdown_new_methods"] = report_new(
                [c for c in all_cases if c.who == "baseline" or c.row in NEW_ROWS(all_cases)])
        if args.profile:
            for m, layers in models.values():
                breakdown(m, layers, device)
    finally:
        for undo in cleanup:
            with contextlib.suppress(Exception):
                undo()
    peak = _peak_rss_mib()
    print(f"\npeak RSS: {peak_ours:.0f} MiB after our cases alone, {peak:.0f} MiB in all "
          "(the peers' model copies and the graphs they keep between calls included)")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if args.json:
        result.update(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                      reps=reps, peak_rss_mib=peak, peak_rss_ours_mib=peak_ours)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
