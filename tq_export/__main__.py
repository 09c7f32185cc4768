"""`python -m tq_export` = `tq-export`."""

import sys

from .cli import main

sys.exit(main())
