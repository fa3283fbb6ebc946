"""Expert consensus labels per source, as of each date: published by ``merge_feedback``, read by the credibility
scorer of later dates (``state/source_feedback/dt=D/labels.json``: ``{source: {"good": n, "bad": n}}``)."""

from __future__ import annotations

import json

from dctp_tasks.publish import earlier_partitions, publish
from dctp_tasks.storage import Storage, state_dir

STATE = "source_feedback"
LABELS_FILE = "labels.json"


def publish_source_labels(storage: Storage, dt: str, labels: dict[str, dict[str, int]]) -> None:
    """Publish the consensus label counts per source as of date ``dt``'s merge."""
    with publish(storage, state_dir(STATE, dt)) as state:
        state.write_bytes(LABELS_FILE, json.dumps(labels, sort_keys=True).encode())


def latest_source_labels(storage: Storage, dt: str) -> tuple[str, str] | None:
    """Return ``(date, folder)`` of the latest source labels published before ``dt`` (``None``: none yet)."""
    published = earlier_partitions(storage, state_dir(STATE), dt)
    return published[-1] if published else None
