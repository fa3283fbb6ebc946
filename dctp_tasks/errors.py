"""Which errors a retry may fix: the one policy every task, the preflight and the CLI apply.

A transient fault (the network, an S3 5xx, a restarting database or tracking server, a lost Delta commit race) is
retried; everything else — bad config or input, a missing bucket or connection, a programming error — fails at once.
"""

from __future__ import annotations

import re

#: Storage errors no retry can fix: the bucket is missing or the credentials are refused (S3 codes, pyarrow texts).
PERMANENT_STORAGE_ERRORS = re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|[Bb]ucket .*(does not exist|not found)|"
                                      r"AccessDenied|ACCESS_DENIED|Access Denied|InvalidAccessKeyId|"
                                      r"INVALID_ACCESS_KEY_ID|SignatureDoesNotMatch|SIGNATURE_DOES_NOT_MATCH")
#: MLflow error codes of a tracking server that is down, overloaded or restarting.
TRANSIENT_MLFLOW_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                          "ABORTED", "SERVICE_UNDER_MAINTENANCE"}


def is_transient(exc: BaseException) -> bool:
    """Return whether a retry may fix ``exc``: the network, a storage service, a database or a tracking server
    failed (S3 5xx and timeouts surface as ``OSError``), another writer won a Delta commit, the GPU was busy."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return False  # a missing input or a forbidden path stays so until someone acts
    if isinstance(exc, OSError):  # ConnectionError and TimeoutError included
        return PERMANENT_STORAGE_ERRORS.search(str(exc)) is None
    names = {cls.__name__ for cls in type(exc).__mro__}
    modules = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    if names & {"OperationalError", "InterfaceError", "DisconnectionError"} and \
            modules & {"psycopg2", "psycopg", "sqlalchemy", "sqlite3"}:
        return True  # a database restarting, a dropped connection, a locked SQLite file
    if "CommitFailedError" in names or "OutOfMemoryError" in names:
        return True  # a Delta commit race the export's own retries did not win; a GPU shared with another task
    if "MlflowException" in names:
        return getattr(exc, "error_code", None) in TRANSIENT_MLFLOW_CODES
    if "AirflowRuntimeError" in names:  # the task's call to the API server: only the server failing is transient
        return str(getattr(getattr(getattr(exc, "error", None), "error", None), "value", "")) == "API_SERVER_ERROR"
    return False


def is_permanent(exc: BaseException) -> bool:
    """Return whether a retry cannot fix ``exc``: everything not known to be transient (``is_transient``).

    That includes bad config or input, a schema mismatch, a missing column, bucket or connection, an unbalanced
    ledger, and programming errors (``KeyError``, ``TypeError`` …): retrying those only delays the failure.
    """
    return not is_transient(exc)
