"""``python -m explain IMAGE ... --out DIR``: see :mod:`explain.cli`."""

from explain.cli import main

raise SystemExit(main())
