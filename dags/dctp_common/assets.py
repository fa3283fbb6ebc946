"""The curated Delta table as an Airflow Asset: ``export`` declares it as an outlet, so DAGs can be scheduled on
each new version (the event's ``extra`` holds the version, the date, the table URI and the row count).

Parsed with the DAG files, so the URI comes from the environment only: ``DCTP_DATA_ROOT`` (the same default as
the tasks: ``$AIRFLOW_HOME/dctp-data``) and ``DCTP_DATASET_NAME`` (default ``curated``), which must name the
table ``export.dataset_name`` configures; ``export`` fails, naming both, when they differ.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import Asset

ASSET_NAME_PREFIX = "dctp_"


def dataset_name() -> str:
    return os.environ.get("DCTP_DATASET_NAME") or "curated"


def table_uri(name: str | None = None) -> str:
    """Return the table's URI under the data root (the data root's default is the tasks' own)."""
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    root = os.environ.get("DCTP_DATA_ROOT") or (home / "dctp-data").absolute().as_uri()
    return f"{root.rstrip('/')}/datasets/{name or dataset_name()}"


def curated_asset() -> Asset:
    return Asset(name=f"{ASSET_NAME_PREFIX}{dataset_name()}", uri=table_uri(), group="dctp")


CURATED = curated_asset()
