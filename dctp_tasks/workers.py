"""Process pools that are safe inside an Airflow task: clean ``spawn`` children that never re-run ``__main__``."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import current_process, get_context


def worker_count(configured: int) -> int:
    """Return ``configured``, or one worker per CPU core when it is 0."""
    return configured or os.cpu_count() or 1


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """Yield a ``spawn`` process pool whose workers do not re-import the parent's main script.

    ``spawn`` (and ``forkserver``) children re-import the parent's ``__main__`` before they unpickle any work.
    Under Airflow that script is the ``airflow`` CLI, whose import initialises Airflow and fails inside a task.
    Our workers only run functions of ``dctp_tasks``, so while the pool lives the parent presents an empty main
    module. ``spawn`` rather than ``fork``: the parent holds Arrow and HTTP threads that a fork would copy
    mid-flight.
    """
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    # A task run by a Celery worker is forked from a prefork (billiard) child. It inherits that child's daemon flag,
    # and a daemonic process may not start children; and billiard's authkey, which multiprocessing refuses to
    # pickle for its spawned children. The pool's workers are joined when this block ends, so none outlives it.
    me = current_process()
    saved = dict(me._config)
    me._config["daemon"] = False
    me._config["authkey"] = _SpawnableKey(me.authkey)
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            yield pool
    finally:
        me._config.update(saved)
        sys.modules["__main__"] = real


class _SpawnableKey(bytes):
    """A process's authkey as plain bytes to its spawned children (the key multiprocessing itself hands them)."""

    def __reduce__(self):
        return bytes, (bytes(self),)
