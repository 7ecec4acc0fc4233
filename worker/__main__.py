"""`python -m worker` is the `opskeeper` command."""

import sys

from worker.cli import main

sys.exit(main())
