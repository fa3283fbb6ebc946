"""Where stages meet: each run of a stage publishes one version of its staged output, its kept rows and its
dropped rows together, under ``staging/{dag_id}/dt=D/{stage}/``::

    staging/dctp_daily/dt=2026-01-02/normalize/_CURRENT.json
    staging/dctp_daily/dt=2026-01-02/normalize/v-…/rows/part-00000.parquet      the rows it kept
    staging/dctp_daily/dt=2026-01-02/normalize/v-…/rejects/part-00000.parquet   the rows it dropped (the ledger)

A stage reads the exact version its upstream task published in the same DAG run (the XCom carries it), so two
runs of one date never read each other's half-finished work; without a version it reads the current one.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa

from dctp_tasks.ledger import REJECT_SCHEMA
from dctp_tasks.publish import NotPublished, Publication, resolve
from dctp_tasks.storage import Storage, staging_dir

ROWS = "rows"
REJECTS = "rejects"


def stage_output(storage: Storage, dag_id: str, dt: str, stage: str, **kwargs) -> Publication:
    """Return the publication of a new version of ``stage``'s output for ``dt`` (use it as a context manager)."""
    return Publication(storage, staging_dir(dag_id, dt, stage), **kwargs)


def stage_version(storage: Storage, dag_id: str, dt: str, stage: str, version: str | None = None) -> str:
    """Return the folder (relative to the root) of ``version`` of ``stage``'s output, or of its current version.

    Raises ``FileNotFoundError`` naming the DAG to run when the stage never ran for ``dt``.
    """
    try:
        return resolve(storage, staging_dir(dag_id, dt, stage), version)
    except NotPublished as exc:
        raise NotPublished(f"{exc}: run {stage} of {dag_id} for dt={dt} first") from exc


def stage_rows(storage: Storage, dag_id: str, dt: str, stage: str, version: str | None = None) -> str:
    """Return the folder of the rows ``stage`` kept for ``dt`` (``version``, or the current one)."""
    return posixpath.join(stage_version(storage, dag_id, dt, stage, version), ROWS)


def stage_rejects(storage: Storage, dag_id: str, dt: str, stage: str, version: str | None = None) -> pa.Table:
    """Return the rows ``stage`` dropped for ``dt`` in ``version`` (or the current one); empty when none."""
    folder = posixpath.join(stage_version(storage, dag_id, dt, stage, version), REJECTS)
    if not any(p.endswith(".parquet") for p in storage.list_files(folder)):
        return REJECT_SCHEMA.empty_table()
    return storage.read_table(folder).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)


def staged_rejects(storage: Storage, dag_id: str, dt: str) -> pa.Table:
    """Return every row the current versions of ``dag_id``'s stages dropped for ``dt`` (before any export)."""
    parent = posixpath.dirname(staging_dir(dag_id, dt, "x"))
    tables = []
    for stage in storage.list_dirs(parent):
        try:
            tables.append(stage_rejects(storage, dag_id, dt, stage))
        except NotPublished:
            continue
    return pa.concat_tables([REJECT_SCHEMA.empty_table(), *tables])
