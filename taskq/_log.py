"""The ``taskq`` logger: worker starts, exits, crashes, restarts, timeouts, retries, shutdown.

Silent unless the application configures logging; the library never prints.
"""

import logging

log = logging.getLogger("taskq")
log.addHandler(logging.NullHandler())
