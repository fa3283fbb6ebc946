"""Lineage of a table version: for each date it holds, the commit that wrote that date's rows (run, config hash,
code version, MLflow run id, counts), read from the Delta log once for the whole version."""

from __future__ import annotations

from dctp_tasks.export.delta import METADATA_PREFIX, commit_info, dataset_dir, for_date, open_table
from dctp_tasks.storage import Storage

#: Commit metadata keys a version's lineage keeps for each date (without the ``dctp.`` prefix).
LINEAGE_KEYS = ("run_id", "dag_id", "config_hash", "code_version", "mlflow_run_id", "ingested", "exported",
                "synthesized", "ledger_version")


def version_lineage(storage: Storage, name: str, version: int | None = None) -> dict[str, dict]:
    """Return ``{dt: {"version": v, run_id, config_hash, …}}`` for every date with rows in ``version`` (default
    the latest): the latest commit at or before ``version`` that wrote the date (an export or a retraction).

    Dates whose commit log was cleaned up (Delta log retention) map to ``{"version": None}``.
    """
    table = open_table(storage, name, version)
    version = table.version()
    dates = set(table.to_pyarrow_dataset().to_table(columns=["dt"]).column("dt").unique().to_pylist())
    table_dir = dataset_dir(name)
    lineage: dict[str, dict] = {}
    for v in range(version, -1, -1):
        if len(lineage) == len(dates):
            break
        info = commit_info(storage, table_dir, v)
        if info is None:
            break
        for dt in sorted(dates - set(lineage)):
            commit = for_date(info, dt)
            if commit is not None:
                lineage[dt] = {"version": v, **{k: commit.get(f"{METADATA_PREFIX}{k}") for k in LINEAGE_KEYS}}
    return {dt: lineage.get(dt, {"version": None}) for dt in sorted(dates)}
