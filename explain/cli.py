"""Command line: explain one or more pictures and write maps, overlays and a JSON summary.

    python -m explain cat.jpg coffee.jpg --method gradcam++ --targets top3 --out out/
    python -m explain audit pictures/ --model digits_lenet --out audit_out/   (see explain.audit_cli)

Exit codes: 0 every image done; 1 some image could not be read (the others are still done);
2 a usage error (unknown model, layer, method, class, colormap, bad option value) found before
any image is processed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import matplotlib
import numpy as np

from . import COLORMAPS, DEFAULT_MODEL, FITS, NORMALIZATIONS
from .cli_common import EXIT_IMAGE_FAILED, EXIT_OK, EXIT_USAGE, UsageError, _error, _Parser
from .preprocess import POLARITIES
from .render import OVERLAY_MODES
from .errors import ExplainError, UnknownClassError
from .explanation import explain, predict_top
from .io import load_image
from .methods import DEFAULT_METHOD, Method, all_methods, get_method
from .model import Model
from .registry import load_model

MAX_TOP = 20  # more overlays than this per image is almost surely a typo
DEFAULT_PREDICTIONS = 5

_DESCRIPTION = """\
Explain what an image classifier looked at: for each IMAGE, compute class activation maps
(CAM, Grad-CAM and relatives) and write into --out DIR

  <stem>.json                       model, layer, method, top predictions, targets, settings
  <stem>_maps.npy                   raw maps, float32 [K, h, w] (one map per target class)
  <stem>_<method>_<class>.png       one heatmap overlay per target class

<stem> is the image's file name without its extension (suffixed _2, _3, ... when two inputs share
it). <method> is made filename-safe: '+' becomes 'p' (gradcam++ -> gradcampp) and anything other
than letters and digits is dropped. Exit code 0: all images done; 1: some image could not be read
(the others are still written); 2: bad option (unknown model, layer, method, class, ...)."""

_EPILOG = """\
examples:
  python -m explain cat.jpg --out out/
      Grad-CAM of the top-1 class with the default model (efficientnet_lite0)
  python -m explain a.jpg b.png --method gradcam++ --targets 281,285 --normalize shared --out out/
      Grad-CAM++ for 'tabby' (281) and 'Egyptian cat' (285), on one shared colour scale"""


@dataclass(frozen=True)
class TargetSpec:
    """``top`` > 0: the top-N predicted classes; otherwise the explicit ``classes`` (indices or names)."""

    top: int = 0
    classes: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m explain``."""
    p = _Parser(
        prog="python -m explain",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="picture files (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    p.add_argument("--layer", default=None, help="target layer (default: the model's last feature map; saliency ignores it)")
    names = ", ".join(m.name for m in all_methods())
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"one of {names} (default: {DEFAULT_METHOD})")
    p.add_argument(
        "--targets", default="top1",
        help=f"classes to explain: topN (N = 1..{MAX_TOP}, default top1) or a comma list of class "
        "indices or class names (exact, or a part that fits one class only), e.g. 281,285 or tabby,285",
    )
    p.add_argument("--normalize", default="per_map",
                   help="per_map (each map full scale, default), shared (one scale) or max (divided by the maximum)")
    p.add_argument("--colormap", default="jet", help=f"overlay colours: {', '.join(COLORMAPS)} (default: jet)")
    p.add_argument("--alpha", default=0.5, type=float, help="overlay opacity in [0, 1] (default: 0.5)")
    p.add_argument("--overlay-mode", default="blend", dest="overlay_mode",
                   help="blend (opacity --alpha, default), add (--heat-weight·heat + --image-weight·image, "
                   "as cv2.addWeighted) or multiply (the picture times the map)")
    p.add_argument("--heat-weight", default=0.5, type=float, dest="heat_weight", help="add mode (default: 0.5)")
    p.add_argument("--image-weight", default=1.0, type=float, dest="image_weight", help="add mode (default: 1.0)")
    p.add_argument("--smooth", default=0.0, type=float, help="Gaussian smoothing σ in model-view pixels (default: 0)")
    p.add_argument("--on", default="view", choices=("view", "original"),
                   help="draw overlays on the model's square view (default) or on the original picture at its "
                   "own size, as the lessons do")
    p.add_argument("--polarity", default="auto",
                   help="greyscale models: auto (read from the picture, default), dark_on_light or light_on_dark")
    p.add_argument("--fit", default="squash", help="squash (whole picture, default) or crop (centre crop)")
    p.add_argument(
        "--contrast", default=None, metavar="CLASS",
        help="explain each target *rather than* this class (index or name): the map of the score "
        "difference; gradient methods and CAM only",
    )
    p.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE",
        help="a method option, repeatable (e.g. --option steps=64); each method declares its own",
    )
    p.add_argument(
        "--weights", default="default",
        help="default (real weights; torchvision models need them cached) or none (random init)",
    )
    return p


def parse_targets(text: str) -> TargetSpec:
    """Parse ``--targets``: ``topN`` or a comma list; raises :class:`UsageError` on bad syntax."""
    value = text.strip()
    top = re.fullmatch(r"top(\d+)", value, flags=re.IGNORECASE)
    if top:
        n = int(top.group(1))
        if not 1 <= n <= MAX_TOP:
            raise UsageError(f"--targets {value}: N must be between 1 and {MAX_TOP}")
        return TargetSpec(top=n)
    if value.lower() == "top":
        raise UsageError(f"--targets {value}: say how many, e.g. top3")
    items = tuple(s.strip() for s in value.split(","))
    if not value or any(not s for s in items):
        raise UsageError(f"--targets {text!r}: use topN or a comma list of class indices or names, e.g. 281,285")
    return TargetSpec(classes=tuple(dict.fromkeys(items)))  # duplicates would overwrite one PNG


def resolve_class(model: Model, item: str) -> int:
    """A class index from an index or a name; a name must match exactly one class."""
    if item.lstrip("-").isdigit():
        return model.class_index(int(item))
    key = item.lower()
    exact = [i for i, c in enumerate(model.categories) if c.lower() == key]
    matches = exact or [i for i, c in enumerate(model.categories) if key in c.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UnknownClassError(f"Model '{model.name}' has no class named {item!r}; give its index instead.")
    shown = ", ".join(f"{i} ({model.categories[i]})" for i in matches[:6])
    more = f" and {len(matches) - 6} more" if len(matches) > 6 else ""
    raise UnknownClassError(f"Class name {item!r} is ambiguous: {shown}{more}; give the index instead.")


def method_slug(name: str) -> str:
    """Filename-safe method name: ``gradcam++`` → ``gradcampp``."""
    return re.sub(r"[^A-Za-z0-9]", "", name.replace("+", "p"))


def subcommands() -> dict[str, Callable[[list[str]], int]]:
    """``python -m explain <command> …``: the commands other than explaining pictures."""
    from .audit_cli import main as audit_main  # ``audit SOURCE …``
    from .offline import SUBCOMMANDS  # ``download NAME …``, ``models``

    return {"audit": audit_main, **SUBCOMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 some image failed, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = subcommands()
    if argv and argv[0] in commands and not pathlib.Path(argv[0]).is_file():  # a picture may be called "audit"
        return commands[argv[0]](argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        method, targets = _check_options(args)
        model = _load(args)
        if not method.on_input:
            model.layer_info(args.layer)  # UnknownLayerError before any image is read
            method.check(model, args.layer or model.default_layer)
        classes = [resolve_class(model, c) for c in targets.classes]
        args.contrast_index = resolve_class(model, args.contrast) if args.contrast is not None else None
        if args.contrast_index is not None and args.contrast_index in classes:
            raise UsageError(f"--contrast {args.contrast}: the class to contrast with is also a target")
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (UsageError, ExplainError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _error(f"cannot create the output folder {args.out}: {exc.strerror or exc}")
        return EXIT_USAGE

    failed = 0
    stems: set[str] = set()
    for image in args.images:
        stem = _unique_stem(pathlib.Path(image).stem or "image", stems)
        try:
            _explain_one(model, method, args, image, targets, classes, out, stem)
        except (ExplainError, OSError) as exc:
            _error(f"{image}: {_reason(exc)}")
            failed += 1
        except Exception as exc:  # noqa: BLE001 - one unexpected failure must not stop the batch
            _error(f"{image}: unexpected {type(exc).__name__}: {_reason(exc)}")
            failed += 1
    return EXIT_IMAGE_FAILED if failed else EXIT_OK


def _check_options(args: argparse.Namespace) -> tuple[Method, TargetSpec]:
    """Everything that can be checked without the model."""
    method = get_method(args.method)
    if args.colormap not in COLORMAPS and args.colormap not in matplotlib.colormaps:
        raise UsageError(f"unknown colormap {args.colormap!r}: use one of {', '.join(COLORMAPS)}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha {args.alpha}: the overlay opacity must be between 0 and 1")
    if args.normalize not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {args.normalize!r}: use one of {', '.join(NORMALIZATIONS)}")
    if args.overlay_mode not in OVERLAY_MODES:
        raise UsageError(f"unknown overlay mode {args.overlay_mode!r}: use one of {', '.join(OVERLAY_MODES)}")
    for flag, v in (("--heat-weight", args.heat_weight), ("--image-weight", args.image_weight)):
        if not 0.0 <= v <= 10.0:
            raise UsageError(f"{flag} {v}: the weight must be between 0 and 10")
    if not 0.0 <= args.smooth <= 100.0:
        raise UsageError(f"--smooth {args.smooth}: σ must be between 0 and 100 pixels")
    if args.polarity not in POLARITIES:
        raise UsageError(f"unknown polarity {args.polarity!r}: use one of {', '.join(POLARITIES)}")
    if args.fit not in FITS:
        raise UsageError(f"unknown fit {args.fit!r}: use one of {', '.join(FITS)}")
    if args.weights.lower() not in ("default", "none"):
        raise UsageError(f"unknown weights {args.weights!r}: use default or none")
    if args.contrast is not None and not method.supports_contrast:
        able = ", ".join(m.name for m in all_methods() if m.supports_contrast)
        raise UsageError(f"--contrast: {method.title} cannot explain one class rather than another; use one of {able}")
    args.options = parse_options(method, args.option)
    return method, parse_targets(args.targets)


def parse_options(method: Method, items: Sequence[str]) -> dict[str, float | int]:
    """``--option name=value`` pairs, checked against the method's declared parameters."""
    given: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--option {item!r}: write NAME=VALUE, e.g. steps=64")
        given[name.strip()] = value.strip()
    try:
        return method.options(given)
    except ExplainError as exc:
        raise UsageError(f"--option: {exc}") from None


def _load(args: argparse.Namespace) -> Model:
    weights = None if args.weights.lower() == "none" else "default"
    return load_model(args.model, weights=weights)


def _explain_one(
    model: Model,
    method: Method,
    args: argparse.Namespace,
    image_path: str,
    targets: TargetSpec,
    classes: list[int],
    out: pathlib.Path,
    stem: str,
) -> None:
    image = load_image(image_path)
    top_k = max(DEFAULT_PREDICTIONS, targets.top)
    contrast = getattr(args, "contrast_index", None)
    kw = {"options": getattr(args, "options", None), "contrast": contrast}
    if targets.top:
        # The capture is cached by the model, so the second call repeats only the backward pass.
        first = predict_top(model, image, args.fit, layer=args.layer, method=method.name, k=top_k + 1)
        chosen = [i for i, _, _ in first if i != contrast][: targets.top]
        r = explain(model, image, chosen, args.layer, method.name, top_k, args.fit, polarity=args.polarity, **kw)
    else:
        r = explain(model, image, classes, args.layer, method.name, top_k, args.fit, polarity=args.polarity, **kw)

    overlays = r.overlays(args.normalize, args.colormap, args.alpha, args.smooth, mode=args.overlay_mode,
                          heat_weight=args.heat_weight, image_weight=args.image_weight, on=args.on)
    slug = method_slug(r.method)
    names = [f"{stem}_{slug}_{c}.png" for c in r.targets]
    maps_name = f"{stem}_maps.npy"
    np.save(out / maps_name, r.maps.numpy().astype(np.float32, copy=False))
    for pic, name in zip(overlays, names):
        pic.save(out / name, format="PNG")
    summary = {
        "image": image_path,
        "model": r.model_name,
        "weights": args.weights.lower(),
        "layer": r.layer,
        "method": r.method,
        "fit": args.fit,
        "normalize": args.normalize,
        "colormap": args.colormap,
        "alpha": args.alpha,
        "overlay_mode": args.overlay_mode,
        "heat_weight": args.heat_weight,
        "image_weight": args.image_weight,
        "smooth": args.smooth,
        "on": args.on,
        "polarity": r.polarity,  # how a greyscale picture was read (null for colour models)
        "polarity_read_from_picture": r.polarity_auto if r.polarity is not None else None,
        "predictions": [{"index": i, "name": n, "prob": p} for i, n, p in r.predictions],
        "targets": [{"index": c, "name": n, "prob": r.prob(c)} for c, n in zip(r.targets, r.target_names)],
        "empty_targets": [c for k, c in enumerate(r.targets) if r.empty(k)],  # maps zero everywhere
        "contrast": None if r.contrast is None else {"index": r.contrast, "name": r.contrast_name, "prob": r.prob(r.contrast)},
        "options": dict(r.options),
        "maps": maps_name,
        "map_shape": list(r.maps.shape),
        "overlays": names,
        "notices": list(r.notices),
    }
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    arrow = _arrow(sys.stdout)
    label = pathlib.Path(image_path).name
    rather = f" rather than {r.contrast_name}" if r.contrast_name is not None else ""
    for c, n, name in zip(r.targets, r.target_names, names):
        print(f"{label}: {n} ({100 * r.prob(c):.1f}%){rather} {arrow} {out / name}")


def _unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3`` ... when another input already wrote that stem."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _arrow(stream: TextIO) -> str:
    """'→' where the terminal's encoding has it, '->' otherwise."""
    try:
        "→".encode(getattr(stream, "encoding", None) or "ascii")
        return "→"
    except (UnicodeEncodeError, LookupError):
        return "->"
