"""The accepted synthetic rows of earlier dates, which a new generation must not copy.

Each run publishes its accepted rows' ``doc_id, domain, prompt``, MinHash signature and embedding to
``state/synthetic/dt=D/`` (replaced whole by a re-run or a re-decision of the date). A date reads the dates before it,
at most ``synthetic.history_days`` back: what it generates is compared with them (near and semantic copies) and its
prompts with theirs (ROUGE-L), as Self-Instruct compares each new instruction with the pool accepted so far.
"""

from __future__ import annotations

from datetime import date, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.publish import earlier_partitions, publish, resolve
from dctp_tasks.storage import Storage, state_dir

STATE = "synthetic"
COLUMNS = ["doc_id", "domain", "prompt", "signature", "vector"]


def write_history(storage: Storage, dt: str, accepted: pa.Table) -> None:
    """Publish the date's accepted synthetic rows (``COLUMNS``) as its history partition (an empty one too)."""
    with publish(storage, state_dir(STATE, dt)) as state, \
            state.writer("rows", schema=accepted.select(COLUMNS).schema) as writer:
        writer.write(accepted.select(COLUMNS))


def clear_history(storage: Storage, dt: str) -> None:
    """Publish an empty partition for ``dt`` if an earlier run left one: the date no longer exports synthetic rows."""
    try:
        schema = storage.parquet_schema(resolve(storage, state_dir(STATE, dt)), "rows")
    except FileNotFoundError:  # NotPublished included: nothing to clear
        return
    write_history(storage, dt, schema.empty_table())


def read_history(storage: Storage, dt: str, days: int, domains: list[str] | None = None) -> pa.Table | None:
    """Return the accepted synthetic rows of the ``days`` dates before ``dt`` (of ``domains`` when given), or
    ``None`` when there are none."""
    first = (date.fromisoformat(dt) - timedelta(days=days)).isoformat()
    tables = []
    for day, folder in earlier_partitions(storage, state_dir(STATE), dt):
        if day < first or not storage.count_rows(folder, "rows"):
            continue
        table = storage.read_table(folder, "rows", columns=COLUMNS)
        if domains is not None:
            table = table.filter(pc.is_in(table.column("domain"), value_set=pa.array(domains, pa.string())))
        tables.append(table)
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables, promote_options="default") if tables else None
