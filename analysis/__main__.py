"""`python -m analysis`: the alignmixup-analyze CLI."""

from analysis.cli import main

raise SystemExit(main())
