"""``python -m explain audit SOURCE --model NAME --out DIR``: audit a whole set of pictures.

Writes ``DIR/audit.parquet`` (one row per picture, failed ones with their reason),
``DIR/maps.npy``, ``DIR/summary.json`` and ``DIR/shortcuts.json``; a progress bar (count, rate,
time left) goes to stderr. Running again with the same settings does only what is not done yet.

Exit codes: 0 every picture done; 1 some picture failed (the others are done); 2 bad options or a
source that cannot be audited at all (nothing is processed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import DEFAULT_MODEL
from .methods import DEFAULT_METHOD, all_methods
from .cli_common import EXIT_IMAGE_FAILED, EXIT_OK, EXIT_USAGE, UsageError, _error, _Parser
from .errors import ExplainError
from .registry import load_model

_DESCRIPTION = """\
Audit a whole set of pictures: explain each one (Grad-CAM of its top-1 or its true class), then
sum up accuracy, where the model looks per class, and possible shortcuts. SOURCE is a folder
(searched recursively; one sub-folder per class, named by class name or index, gives labels), a
.zip file (read safely, never extracted) or one picture. Results go to --out DIR:

  audit.parquet    one row per picture: label, prediction, confidence, peak, border share, ...
  maps.npy         raw maps [n, h, w] of the pictures done, in the table's order
  summary.json     counts, accuracy, speed, settings
  shortcuts.json   the shortcut finder's findings, each with a plain sentence

Run it again with the same settings to resume: pictures already done are skipped. Exit code 0:
every picture done; 1: some picture failed (listed in the table); 2: bad option or source."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m explain audit``."""
    p = _Parser(prog="python -m explain audit", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="folder of pictures (ImageFolder layout for labels), .zip, or one picture")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing; resumes what is there)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    names = ", ".join(m.name for m in all_methods())
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"one of {names} (default: {DEFAULT_METHOD})")
    p.add_argument("--layer", default=None, help="target layer (default: the model's last feature map)")
    p.add_argument("--target", default="predicted", help="predicted (top-1, default) or label (the folder's class)")
    p.add_argument("--boxes", default=None, metavar="FILE", help="CSV file,x0,y0,x1,y1 of object boxes (original pixels)")
    p.add_argument("--batch-size", default=32, type=int, help="pictures per forward pass (default: 32)")
    p.add_argument("--engine", default="local", help="local (default) or ray (RAY_ADDRESS picks a cluster)")
    p.add_argument("--fit", default="squash", help="squash (whole picture, default) or crop (centre crop)")
    p.add_argument("--weights", default="default", help="default (real weights) or none (random init)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the audit CLI; returns the exit code."""
    from . import audit as run_audit  # the function (explain.audit)

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.target not in ("predicted", "label"):
            raise UsageError(f"--target {args.target!r}: use predicted or label")
        if args.engine not in ("local", "ray"):
            raise UsageError(f"--engine {args.engine!r}: use local or ray")
        if not 1 <= args.batch_size <= 4096:
            raise UsageError(f"--batch-size {args.batch_size}: use 1 to 4096")
        if args.weights.lower() not in ("default", "none"):
            raise UsageError(f"unknown weights {args.weights!r}: use default or none")
        model = load_model(args.model, weights=None if args.weights.lower() == "none" else "default")
    except (UsageError, ExplainError) as exc:
        _error(str(exc))
        return EXIT_USAGE

    bars: list = []
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        def progress(done: int, total: int) -> None:
            if not bars:  # made at the first report, when the total is known
                bars.append(tqdm(total=total, unit="pic", file=sys.stderr, dynamic_ncols=True, desc="audit"))
            bars[0].update(done - bars[0].n)

    try:
        result = run_audit(
            model, args.source, method=args.method, layer=args.layer, target=args.target,
            batch_size=args.batch_size, out=args.out, engine=args.engine, progress=progress,
            boxes=args.boxes, fit=args.fit,
        )
    except ExplainError as exc:
        for b in bars:
            b.close()
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        for b in bars:
            b.close()
        _error("interrupted; the finished batches are kept and the next run with the same settings resumes there")
        return EXIT_IMAGE_FAILED
    for b in bars:
        b.close()
    s = result.summary
    for _i, row in result.failed.iterrows():
        _error(f"{row['file']}: {row['error']}")
    acc = f", accuracy {s['accuracy']:.1%} of {s['labelled']} labelled" if s.get("accuracy") is not None else ""
    rate = f", {s['pictures_per_second']:.1f} pictures/s" if s.get("pictures_per_second") else ""
    print(f"{s['ok']} of {s['pictures']} pictures explained, {s['failed']} failed{acc}{rate}; "
          f"{s['skipped_already_done']} already done. Results in {args.out}")
    for f in result.shortcuts():
        print(f"possible shortcut: {f.message}")
    return EXIT_IMAGE_FAILED if s["failed"] else EXIT_OK
