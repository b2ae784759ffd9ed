"""``python -m taskq``: the same as the ``taskq`` command (see ``taskq --help``)."""

import sys

from taskq._cli import main

if __name__ == "__main__":  # not when a spawned worker re-imports this module
    sys.exit(main())
