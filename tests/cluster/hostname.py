"""``[core] hostname_callable`` for the cluster test: each Celery worker reports the name in its environment.

Two workers on one machine would otherwise record the same host for their task instances.
"""

from __future__ import annotations

import os
import socket

#: The environment variable a worker's name is read from.
HOSTNAME_ENV = "DCTP_TEST_HOSTNAME"


def worker_hostname() -> str:
    """Return ``$DCTP_TEST_HOSTNAME``, or the machine's FQDN for processes that do not set it."""
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()
