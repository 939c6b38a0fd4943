"""``python -m dsd2.cli``: the command line (as ``python -m dsd2`` on one process)."""

import sys

from dsd2.cli import main

sys.exit(main())
