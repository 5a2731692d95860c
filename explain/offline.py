"""Offline classrooms: ``python -m explain download NAME…`` and ``python -m explain models``.

``download`` fetches torchvision's weights into the torch hub cache with the very code the
dashboard uses (``explain.registry``: torch.hub's downloader, which checks the SHA-256 prefix
torchvision publishes in each file name and moves the file into place only when it is complete),
with a progress bar; ``models`` lists every model and whether its weights are on disk.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from .cli_common import EXIT_IMAGE_FAILED as EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .errors import ExplainError
from .registry import checkpoint_dir, download_weights, get_spec, list_models

BAR_WIDTH = 30


def progress_bar(name: str, stream: TextIO | None = None):
    """A ``progress(done, total)`` callback drawing ``name [=====     ]  41% 40.1/97.8 MB`` on ``stream``."""
    last = [-1]
    out = stream or sys.stderr

    def progress(done: int, total: int) -> None:
        mb = done / 2**20
        if total > 0:
            frac = min(1.0, done / total)
            filled = int(frac * BAR_WIDTH)
            line = f"{name} [{'=' * filled}{' ' * (BAR_WIDTH - filled)}] {100 * frac:3.0f}% {mb:.1f}/{total / 2**20:.1f} MB"
        else:
            line = f"{name} {mb:.1f} MB"
        key = int(mb * 10)
        if key != last[0] or (total and done >= total):
            last[0] = key
            out.write("\r" + line)
            out.flush()

    return progress


def download_main(argv: Sequence[str]) -> int:
    """``python -m explain download resnet50 vgg16 …``: exit 0 all present, 1 some failed, 2 usage."""
    p = argparse.ArgumentParser(prog="python -m explain download",
                                description="Fetch torchvision weights into the torch hub cache for offline use.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="torchvision model names, e.g. resnet50 vgg16")
    p.add_argument("--weights", default="default", help="weights name (default: each model's default weights)")
    try:
        args = p.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    failed = 0
    for name in args.models:
        try:
            spec = get_spec(name)
            if spec.source != "torchvision":
                print(f"{name}: {spec.source}, nothing to download")
                continue
            path = download_weights(name, args.weights, progress=progress_bar(name))
            sys.stderr.write("\n")
            print(f"{name}: {path}")
        except ExplainError as exc:
            sys.stderr.write(f"\nerror: {name}: {' '.join(str(exc).split())}\n")
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK


def models_main(argv: Sequence[str]) -> int:
    """``python -m explain models``: every model, its source, and whether its weights are present."""
    p = argparse.ArgumentParser(prog="python -m explain models", description="List every model and its weights.")
    p.parse_args(list(argv))
    infos = list_models()
    width = max(len(i.name) for i in infos)
    print(f"{'model':<{width}}  {'weights':<10}  {'size':>8}  file   (cache: {checkpoint_dir()})")
    for i in infos:
        present = "embedded" if i.source == "embedded" else ("present" if i.cached else "missing")
        size = f"{i.size_mb:.0f} MB" if i.size_mb >= 1 else "-"
        print(f"{i.name:<{width}}  {present:<10}  {size:>8}  {i.weights_file or '-'}")
    return EXIT_OK


#: The subcommands of ``python -m explain`` besides explaining pictures.
SUBCOMMANDS = {"download": download_main, "models": models_main}
