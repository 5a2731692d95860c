"""What every ``python -m explain`` command shares: exit codes, one-line usage errors."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_IMAGE_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad option, reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``error: ...``) like every other CLI error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def _error(message: str) -> None:
    text = " ".join(message.split())  # always one line
    # Engine messages are sentences ("Unknown method ..."); after "error:" they read lower-case,
    # but acronyms ("CAM does not apply") keep their capitals.
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    sys.stderr.write(f"error: {text}\n")
