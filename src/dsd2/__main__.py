"""``python -m dsd2``: the command line; what ``torchrun … -m dsd2 run CONFIG`` starts on every rank."""

import os
import sys

from dsd2.cli import main

if __name__ == "__main__":
    if os.environ.get("RANK", "0") not in ("", "0"):
        # rank 0 prints the run's tables; the other ranks would print the same again
        sys.stdout = open(os.devnull, "w")
    sys.exit(main())
