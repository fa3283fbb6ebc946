"""The ledger a Delta version balances against: the rows one run's stages dropped for its date, written once.

Each export writes the date's dropped rows to ``rejects/dt=D/v-{version}/`` before it commits, and its commit names
that version (``dctp.ledger_version``). Readers take the ledger of the commit they look at, so a version and its
ledger always belong together, even when two runs of one date commit one after the other.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.ledger import REJECT_SCHEMA
from dctp_tasks.publish import KEEP_SUPERSEDED, VERSION_PREFIX, new_token, token_time
from dctp_tasks.staging import stage_rejects
from dctp_tasks.storage import Storage, check_date

if TYPE_CHECKING:
    from dctp_tasks.export.delta import Staged

log = logging.getLogger(__name__)

RETRACT_STAGE = "retract"
"""The stage of rows a retraction removed from an earlier export (``dctp_tasks.export.retract``)."""
MERGE_STAGE = "merge_feedback"
"""The stage that drops rows the experts judged bad (``dctp_tasks.feedback.merge``)."""
KEEP_COMMITS = 10
"""Ledgers of a date's last commits that are always kept, whatever their age (older ones go after a day)."""


def rejects_dir(dt: str) -> str:
    return f"rejects/dt={check_date(dt)}"


def ledger_for_run(storage: Storage, dt: str, stages: Sequence[Staged], base: pa.Table | None = None) -> pa.Table:
    """Return the rows ``stages`` dropped for ``dt``; with ``base``, its rows of other stages come first."""
    parts = [stage_rejects(storage, s.dag_id, dt, s.stage, s.version) for s in stages]
    if base is not None:
        # the partition is rebuilt from re-decided rows: retracted rows go (merging drops them again), and so do the
        # merge's drops when merging is off this time (its rows pass on unfiltered)
        replaced = pa.array(sorted({s.stage for s in stages} | {RETRACT_STAGE, MERGE_STAGE}), pa.string())
        parts.insert(0, base.filter(pc.invert(pc.is_in(base.column("stage"), value_set=replaced))))
    return pa.concat_tables([REJECT_SCHEMA.empty_table(), *parts])


def write_ledger(storage: Storage, dt: str, rejects: pa.Table) -> str:
    """Write ``rejects`` as a new ledger version of ``dt``; return the version."""
    version = new_token()
    with storage.writer(rejects_dir(dt), VERSION_PREFIX + version, schema=REJECT_SCHEMA) as writer:
        writer.write(rejects)
    return version


def read_ledger(storage: Storage, dt: str, version: str | None) -> pa.Table:
    """Return ledger ``version`` of ``dt``; a missing one says so rather than passing for an empty ledger."""
    if version is None:
        raise FileNotFoundError(f"the commit of dt={dt} names no ledger (written by an older version): re-run the "
                                "date to rebuild it")
    folder = posixpath.join(rejects_dir(dt), VERSION_PREFIX + version)
    if not storage.exists(folder):
        raise FileNotFoundError(f"ledger {version} of dt={dt} is gone from {storage.uri(folder)}")
    return storage.read_table(folder).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)


def committed_ledger(storage: Storage, dataset: str, dt: str, version: int | None = None) -> tuple[dict, pa.Table]:
    """Return the latest commit of ``dt`` (at or before table ``version``) and the ledger it balances against."""
    from dctp_tasks.export.delta import METADATA_PREFIX, latest_commit

    commit = latest_commit(storage, dataset, dt, version)
    if commit is None:
        raise FileNotFoundError(f"dt={dt} has no commit in table {dataset!r}" +
                                (f" up to version {version}" if version is not None else ""))
    return commit, read_ledger(storage, dt, commit.get(f"{METADATA_PREFIX}ledger_version"))


def collect_ledgers(storage: Storage, dataset: str, dt: str, now: datetime | None = None) -> list[str]:
    """Delete ledger versions of ``dt`` older than a day that none of the date's last commits names."""
    from dctp_tasks.export.delta import METADATA_PREFIX, for_date, open_table

    commits = sorted(filter(None, (for_date(c, dt) for c in open_table(storage, dataset).history())),
                     key=lambda c: c["version"], reverse=True)[:KEEP_COMMITS]
    named = {c.get(f"{METADATA_PREFIX}ledger_version") for c in commits}
    limit = (now or datetime.now(UTC)) - KEEP_SUPERSEDED
    deleted = []
    for folder in storage.list_dirs(rejects_dir(dt)):
        version = folder.removeprefix(VERSION_PREFIX)
        created = token_time(version)
        if folder.startswith(VERSION_PREFIX) and version not in named and created is not None and created < limit:
            try:
                storage.delete_dir(rejects_dir(dt), folder)
            except FileNotFoundError:  # collected by another export meanwhile
                continue
            deleted.append(version)
    return deleted
