"""`python -m tune_jobs` is `alignmixup-tune`."""

import sys

from tune_jobs.cli import main

sys.exit(main())
