"""`python -m baton_operator.planning` is `baton plan`."""

import sys

from baton_operator.planning.cli import main

if __name__ == "__main__":
    sys.exit(main())
