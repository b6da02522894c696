"""`python -m alignmixup`: the single-run CLI."""

import sys

from alignmixup.cli import main

sys.exit(main())
