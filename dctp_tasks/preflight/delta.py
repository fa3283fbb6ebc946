"""Preflight of the exported Delta table: this deltalake reads its protocol and can commit to it."""

from __future__ import annotations

from dctp_tasks.preflight import Check
from dctp_tasks.preflight.checks import describe_error, retrying
from dctp_tasks.storage import Storage

#: Delta writer features deltalake 1.6 commits to (probed by appending to a table that declares each one; the test
#: suite re-probes the installed deltalake). A table with any other writer feature is readable, not writable.
WRITABLE_DELTA_FEATURES = frozenset({
    "appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns", "columnMapping",
    "deletionVectors", "timestampNtz", "v2Checkpoint", "variantType", "variantType-preview",
})
MAX_WRITER_VERSION = 7
#: What a legacy writer version (before table features, version 7) implies a writer supports.
LEGACY_WRITER_FEATURES = {
    2: {"appendOnly", "invariants"},
    3: {"checkConstraints"},
    4: {"changeDataFeed", "generatedColumns"},
    5: {"columnMapping"},
    6: {"identityColumns"},
}


def check_delta(storage: Storage, dataset: str) -> Check:
    """This deltalake can read the exported table's protocol and commit to it."""
    import deltalake

    from dctp_tasks.export import dataset_dir

    table_dir = dataset_dir(dataset)
    version = deltalake.__version__
    fix = ("upgrade deltalake on every worker (pip install -U deltalake), or export to a new table "
           "(export.dataset_name)")
    try:
        if not retrying(lambda: storage.exists(table_dir, "_delta_log")):
            return Check("delta table", "ok", f"{table_dir} does not exist yet: the first export creates it")
        table = retrying(lambda: deltalake.DeltaTable(storage.uri(table_dir),
                                                      storage_options=storage.delta_storage_options()))
    except Exception as exc:
        return Check("delta table", "fail", f"deltalake {version} cannot read {table_dir}: {describe_error(exc)}", fix)
    protocol = table.protocol()
    features = sorted(set(protocol.reader_features or []) | set(protocol.writer_features or []))
    shown = (f"protocol reader {protocol.min_reader_version} / writer {protocol.min_writer_version}"
             + (f", features {', '.join(features)}" if features else ""))
    declared = set(protocol.writer_features or [])
    if protocol.min_writer_version < MAX_WRITER_VERSION:
        declared = set().union(*(f for v, f in LEGACY_WRITER_FEATURES.items() if v <= protocol.min_writer_version))
    unwritable = sorted(declared - WRITABLE_DELTA_FEATURES)
    if protocol.min_writer_version > MAX_WRITER_VERSION or unwritable:
        what = ", ".join(unwritable) or f"writer version {protocol.min_writer_version}"
        return Check("delta table", "fail",
                     f"{table_dir} ({shown}) is readable, but deltalake {version} cannot commit to it: {what}", fix)
    return Check("delta table", "ok", f"{table_dir} version {table.version()}, {shown}; deltalake {version} reads "
                                      "and writes it")
