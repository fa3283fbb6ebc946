"""Export: commit a date's curated rows to the Delta Lake table as one new version (``delta``), together with the
ledger that version balances against (``ledger``)."""

from dctp_tasks.export.delta import (
    METADATA_PREFIX,
    PARTITION,
    Staged,
    StaleCommit,
    dataset_dir,
    export_day,
    ingested_count,
    latest_commit,
    open_table,
    rescore_basis,
    rows_for_dt,
    synthesized_count,
)
from dctp_tasks.export.ledger import committed_ledger, read_ledger, rejects_dir

__all__ = ["METADATA_PREFIX", "PARTITION", "Staged", "StaleCommit", "committed_ledger", "dataset_dir", "export_day",
           "ingested_count", "latest_commit", "open_table", "read_ledger", "rejects_dir", "rescore_basis",
           "rows_for_dt", "synthesized_count"]
