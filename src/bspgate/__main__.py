"""`python -m bspgate` is the `bspgate` console script."""

from bspgate.cli import main

raise SystemExit(main())
