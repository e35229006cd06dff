"""``python -m sampledata``: see :mod:`sampledata.cli`."""

from sampledata.cli import main

raise SystemExit(main())
