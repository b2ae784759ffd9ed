"""Imported by multiprocessing's fork server when ``taskq worker`` starts it: the
server leaves the command's process group, as taskq's own workers do (``_worker.py``).

A signal to the whole group (``kill -TERM -- -PGID``, GNU ``timeout``) would otherwise
kill the fork server, and the parent would then see every worker it started as
exited (the server is what reports their exit codes), running jobs included.
Importing it anywhere else moves that process out of its group: only ``taskq
worker``, which owns its process, asks for it.
"""

from taskq._worker import leave_process_group

leave_process_group()
