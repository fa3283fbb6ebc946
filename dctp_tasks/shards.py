"""Shards: a stage splits its day into consecutive row ranges of its input, one task each, and one reduce publishes.

A plan is a list of ``Shard`` descriptors (a few numbers and names, never data: they travel as XCom). Every shard
writes its part of one new version of the stage's staged output, files named ``part-{shard}-NNNNN.parquet`` under
``rows/`` and ``rejects/``, and, last, a marker ``_shards/{shard}.json`` with its counts and files. The reduce
checks that every marker is there, deletes any file no marker lists (what a killed attempt left), and switches
the stage's pointer to the version, so readers see every shard or none. A retried shard replaces only its own
files; a re-run of the day plans a new version, so no shard of an earlier plan (or shard count) is ever read.

Shards are consecutive ranges of the input in file order and their parts are read back in shard order, so the
output holds the unsharded run's rows in the same order: one shard is the unsharded stage.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dctp_tasks.config import PipelineConfig
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.publish import current, new_token, switch
from dctp_tasks.staging import REJECTS, ROWS, stage_rows
from dctp_tasks.stats import StageResult
from dctp_tasks.storage import VERSION_PREFIX, PartWriter, Storage, staging_dir

log = logging.getLogger(__name__)

MARKERS = "_shards"


class ShardsMissing(RuntimeError):
    """The reduce found a shard without its marker: a shard never finished, or its output was deleted."""


@dataclass(frozen=True)
class Shard:
    """One task's share of a stage's day: input rows ``[start, stop)`` of ``input_stage``'s ``input_version``."""

    dag_id: str
    dt: str
    stage: str
    version: str
    """The version of the stage's output that all shards of the plan write together."""
    index: int
    count: int
    start: int
    stop: int
    input_stage: str
    input_version: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    """What the stage's plan hands every shard (a cache key, a mode); JSON-safe."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """How the shard is named in the Airflow UI (the mapped task's index) and in logs."""
        return f"{self.stage} {self.index + 1}/{self.count} rows {self.start}-{self.stop}"

    @property
    def prefix(self) -> str:
        return f"part-{self.index:05d}"

    def output(self) -> str:
        """Return the folder (relative to the root) of the version the shards build."""
        return posixpath.join(staging_dir(self.dag_id, self.dt, self.stage), VERSION_PREFIX + self.version)

    def input(self, storage: Storage) -> str:
        return stage_rows(storage, self.dag_id, self.dt, self.input_stage, self.input_version)


@dataclass(frozen=True)
class ShardedStage:
    """A stage run as ``plan`` → each phase mapped over the plan's shards, in order → ``finish`` (the reduce).

    Most stages have one phase (``shard``); a dedup stage has two (sign or encode, then search), the second
    reading what every shard of the first wrote.
    """

    plan: Callable[..., list[Shard]]
    phases: dict[str, Callable[[Storage, PipelineConfig, Shard], dict]]
    finish: Callable[[Storage, PipelineConfig, list[Shard]], StageResult]

    def run_all(self, storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *args: Any,
                **kwargs: Any) -> StageResult:
        """Run every shard here, one after the other: the stage as one task (the CLI, tests, benchmarks)."""
        shards = self.plan(storage, config, dag_id, dt, *args, **kwargs)
        for run in self.phases.values():
            for shard in shards:
                run(storage, config, shard)
        return self.finish(storage, config, shards)


def plan_shards(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, stage: str, *, input_stage: str,
                input_version: str | None, extra: dict[str, Any] | None = None) -> list[Shard]:
    """Split the input of ``stage`` into at most ``config.sharding.count(stage, rows)`` consecutive ranges of
    nearly equal size, cut only between the batches the unsharded stage reads (``batch_size`` rows).

    The input version is pinned here (its current one when none is given), so every shard reads the same rows
    even if another run of the date publishes meanwhile.
    """
    if input_version is None:
        input_version = (current(storage, staging_dir(dag_id, dt, input_stage)) or {}).get("version")
    starts = storage.batch_starts(stage_rows(storage, dag_id, dt, input_stage, input_version),
                                  batch_size=config.batch_size)
    rows = int(starts[-1])
    # Cut only where the unsharded stage starts a batch, so every batch (what a model sees at once) is the same
    # whatever the shard count, and so are the scores, bit for bit. A day of fewer batches gets fewer shards.
    wanted = config.sharding.count(stage, rows)
    ideal = np.arange(wanted + 1) * rows / wanted
    nearest = np.clip(np.searchsorted(starts, ideal), 0, len(starts) - 1)
    below = np.maximum(nearest - 1, 0)
    nearest = np.where(np.abs(starts[below] - ideal) <= np.abs(starts[nearest] - ideal), below, nearest)
    bounds = np.unique(np.concatenate([[0], starts[nearest], [rows]])).tolist()
    if len(bounds) == 1:
        bounds.append(rows)  # an empty day: one empty shard
    count = len(bounds) - 1
    version = new_token()
    log.info("%s dt=%s: %d input rows in %d shard(s), version %s", stage, dt, rows, count, version)
    return [Shard(dag_id, dt, stage, version, i, count, int(bounds[i]), int(bounds[i + 1]), input_stage, input_version,
                  dict(extra or {})) for i in range(count)]


def iter_shard(storage: Storage, shard: Shard, *, batch_size: int, columns: list[str] | None = None):
    """Yield the shard's input rows in order, at most ``batch_size`` at a time."""
    yield from storage.iter_range(shard.input(storage), start=shard.start, stop=shard.stop, batch_size=batch_size,
                                  columns=columns)


class ShardOutput:
    """Where one shard writes: its own files inside the plan's version; ``done(stats)`` writes its marker last."""

    def __init__(self, storage: Storage, shard: Shard, phase: str = "shard", folder: str | None = None) -> None:
        self.storage = storage
        self.shard = shard
        self.phase = phase
        self.folder = folder or shard.output()
        self.version = shard.version
        self._writers: list[PartWriter] = []

    def sub(self, *parts: str) -> str:
        return posixpath.join(self.folder, *parts)

    def writer(self, *parts: str, schema, **kwargs) -> PartWriter:
        """Return a writer of this shard's files in the sub-dataset ``parts`` (its earlier attempt's are deleted)."""
        writer = self.storage.writer(self.sub(*parts), schema=schema, prefix=self.shard.prefix, **kwargs)
        self._writers.append(writer)
        return writer

    def rejects(self) -> RejectWriter:
        """Return the ledger writer of the rows this shard drops."""
        rejects = RejectWriter(self.storage, self.sub(REJECTS), self.shard.dt, self.shard.stage,
                               prefix=self.shard.prefix)
        self._writers.append(rejects.parts)
        return rejects

    def done(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Record that the shard finished: its counts and the files it wrote. Returns the marker."""
        marker = {**self.shard.as_dict(), "stats": stats,
                  "files": sorted(self.storage.relative(f) for w in self._writers for f in w.files)}
        self.storage.write_bytes(self.storage.path(self.sub(marker_name(self.phase, self.shard.index))),
                                 json.dumps(marker, indent=1, default=str).encode())
        log.info("%s: done, %s", self.shard.label, stats)
        return marker


def marker_name(phase: str, index: int) -> str:
    return posixpath.join(MARKERS, f"{phase}-{index:05d}.json")


def shard_stats(storage: Storage, shards: list[Shard], phase: str = "shard", folder: str | None = None
                ) -> list[dict[str, Any]]:
    """Return every shard's recorded counts of ``phase`` in shard order, once each has finished; delete the Parquet
    files under ``folder`` (the plan's version) that no finished shard of any phase wrote.

    Raises ``ShardsMissing`` naming the shards without a marker.
    """
    first = shards[0]
    folder = folder or first.output()
    markers, missing = [], []
    for shard in shards:
        try:
            markers.append(storage.read_json(storage.path(folder, marker_name(phase, shard.index))))
        except FileNotFoundError:
            missing.append(shard.index)
    if missing:
        raise ShardsMissing(f"{first.stage} dt={first.dt}: {phase} shard(s) {', '.join(str(i + 1) for i in missing)} "
                            f"of {first.count} (version {first.version}) have no output: run their tasks (or the "
                            "stage's plan task, for a new plan) again")
    listed = {f for path in storage.list_files(folder, MARKERS, published=False)
              for f in storage.read_json(path)["files"]}  # what every phase's finished shards wrote
    stray = [p for p in storage.list_files(folder, published=False)
             if p.endswith(".parquet") and storage.relative(p) not in listed]
    if stray:
        log.warning("%s dt=%s: deleting %d file(s) no finished %s shard wrote", first.stage, first.dt, len(stray),
                    phase)
        storage.delete_files(stray)
    return [m["stats"] for m in markers]


def publish_shards(storage: Storage, shards: list[Shard], meta: dict[str, Any] | None = None) -> None:
    """Make the version all ``shards`` wrote the stage's current output."""
    first = shards[0]
    switch(storage, staging_dir(first.dag_id, first.dt, first.stage), first.version, meta=meta)


def rows_uri(storage: Storage, shard: Shard) -> str:
    return storage.uri(posixpath.join(shard.output(), ROWS))
