"""`python -m cluster` is `alignmixup-cluster`."""

import sys

from cluster.submit import main

sys.exit(main())
