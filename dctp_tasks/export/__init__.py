"""Export: commit a date's curated rows to the Delta Lake table as one new version (``delta``)."""

from dctp_tasks.export.delta import (
    METADATA_PREFIX,
    PARTITION,
    dataset_dir,
    export_day,
    ingested_count,
    open_table,
    rows_for_dt,
)

__all__ = ["METADATA_PREFIX", "PARTITION", "dataset_dir", "export_day", "ingested_count", "open_table",
           "rows_for_dt"]
