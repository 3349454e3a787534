"""``python -m fastoptim bench``: the same command line as the ``fastoptim`` script."""

import sys

from fastoptim.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
