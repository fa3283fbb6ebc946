"""Score a day: run the enabled CPU scorers (stage ``score``) or GPU scorers (stage ``score_models``) batch by batch.

Each writes its input rows plus ``scores``: a struct with one sub-struct per scorer (``scores.{scorer}.{field}``),
keeping the sub-structs earlier stages wrote. Scoring removes no row. A stage whose input and scorer settings are
unchanged since its last run is not recomputed (``_manifest.json``), so re-deciding with new thresholds never
re-runs a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.quality.base import Scorer, ScoringContext
from dctp_tasks.quality.registry import build_scorers, scorer_settings
from dctp_tasks.records import append_step, with_column
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, staging_dir

log = logging.getLogger(__name__)

STAGES = {"cpu": "score", "gpu": "score_models"}
INPUT_STAGES = {"cpu": "dedup_semantic", "gpu": "score"}
MANIFEST = "_manifest.json"


def score_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, device: Literal["cpu", "gpu"],
              input_stage: str | None = None) -> StageResult:
    """Add the ``cpu`` or ``gpu`` scorers' scores to every row of date ``dt``; return counts and per-scorer speed.

    With no scorer of that kind enabled nothing is written and ``extra["output_stage"]`` names the input.
    """
    stage = STAGES[device]
    in_stage = input_stage or INPUT_STAGES[device]
    in_dir, out_dir = staging_dir(dag_id, dt, in_stage), staging_dir(dag_id, dt, stage)
    scorers = [s for s in build_scorers(config.quality) if s.gpu == (device == "gpu")] if config.quality.enabled \
        else []
    result = StageResult(stage, storage.uri(out_dir))
    if not scorers:
        result.total = result.kept = storage.count_rows(in_dir)
        result.output_uri = storage.uri(in_dir)
        result.extra = {"output_stage": in_stage, "scorers": ""}
        log.info("%s dt=%s: no %s scorer enabled; %s passes through", stage, dt, device, in_stage)
        return result
    context = ScoringContext(storage, dt)
    key = _cache_key(storage, in_dir, config, device, scorers, context)
    cached = _read_manifest(storage, out_dir)
    if cached and cached.get("key") == key:
        log.info("%s dt=%s: input and scorer settings unchanged since %s; scores reused, no model run",
                 stage, dt, cached["written_at"])
        result.total = result.kept = cached["rows"]
        result.extra = {**cached["extra"], "output_stage": stage, "cached": 1}
        return result
    storage.delete_files([p for p in storage.list_files(out_dir) if p.endswith(MANIFEST)])
    names = ",".join(s.name for s in scorers)
    log.info("%s dt=%s: scoring with %s", stage, dt, names)
    seconds = {s.name: 0.0 for s in scorers}
    with Timer() as timer:
        for scorer in scorers:
            start = time.perf_counter()
            scorer.prepare(context)
            seconds[scorer.name] += time.perf_counter() - start
        schema = _output_schema(storage.parquet_schema(in_dir), scorers)
        params = hashlib.sha256(key.encode()).hexdigest()[:16]
        with storage.writer(out_dir, schema=schema) as writer:
            for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
                table = _score_batch(batch, scorers, seconds)
                table = with_column(table, table.schema.field("lineage"),
                                    append_step(table.column("lineage"), stage, dctp_tasks.__version__, params))
                writer.write(table)
    result.total = result.kept = writer.rows
    result.seconds = timer.seconds
    embedded = [lookup.stats for lookup in context.extra.get("embeddings", {}).values()]
    result.extra = {"output_stage": stage, "scorers": names, "cached": 0,
                    "embeddings_reused": sum(e["reused"] for e in embedded),
                    "embeddings_encoded": sum(e["encoded"] for e in embedded),
                    **{f"{name}_docs_per_s": round(writer.rows / s, 1) if s > 0 else 0.0
                       for name, s in seconds.items()}}
    _write_manifest(storage, out_dir, {"key": key, "rows": writer.rows, "extra": result.extra,
                                       "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log.info("%s dt=%s: %d rows scored by %s in %.1fs (%s)", stage, dt, writer.rows, names, timer.seconds,
             ", ".join(f"{n} {s:.1f}s" for n, s in seconds.items()))
    return result


def _score_batch(batch: pa.RecordBatch, scorers: list[Scorer], seconds: dict[str, float]) -> pa.Table:
    """Return the batch with ``scores`` holding its earlier sub-structs plus these scorers' (replaced if present)."""
    table = pa.Table.from_batches([batch])
    fields, arrays = [], []
    if "scores" in table.column_names:
        earlier = table.column("scores").combine_chunks()
        for i, field in enumerate(earlier.type):
            if field.name not in {s.name for s in scorers}:
                fields.append(field)
                arrays.append(earlier.field(i))
        table = table.drop_columns(["scores"])
    for scorer in scorers:
        start = time.perf_counter()
        struct = scorer.to_struct(scorer.score(batch))
        seconds[scorer.name] += time.perf_counter() - start
        if len(struct) != batch.num_rows:
            raise ValueError(f"scorer {scorer.name} returned {len(struct)} rows for a batch of {batch.num_rows}")
        fields.append(pa.field(scorer.name, struct.type))
        arrays.append(struct)
    scores = pa.StructArray.from_arrays(arrays, fields=fields) if arrays else None
    return table.append_column(pa.field("scores", scores.type), scores)


def _output_schema(input_schema: pa.Schema, scorers: list[Scorer]) -> pa.Schema:
    fields = []
    if "scores" in input_schema.names:
        fields = [f for f in input_schema.field("scores").type if f.name not in {s.name for s in scorers}]
        input_schema = input_schema.remove(input_schema.get_field_index("scores"))
    fields += [pa.field(s.name, s.struct_type()) for s in scorers]
    return input_schema.append(pa.field("scores", pa.struct(fields)))


def _cache_key(storage: Storage, in_dir: str, config: PipelineConfig, device: str, scorers: list[Scorer],
               context: ScoringContext) -> str:
    """Return what the stage's output depends on: the input files' footers, the scorers' settings, the code."""
    files = []
    for path in storage.list_files(in_dir):
        if path.endswith(".parquet"):
            with storage.fs.open_input_file(path) as handle:
                meta = pq.ParquetFile(handle).metadata.to_dict()
            files.append([path.rsplit("/", 1)[-1], meta])
    mine = {s.name for s in scorers}
    settings = [(name, settings) for name, _, settings in scorer_settings(config.quality) if name in mine]
    payload = {"files": files, "scorers": settings, "device": device, "batch_size": config.batch_size,
               "code": dctp_tasks.__version__, "tokens": [s.cache_token(context) for s in scorers]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_manifest(storage: Storage, out_dir: str) -> dict | None:
    path = storage.path(out_dir, MANIFEST)
    if not storage.exists(out_dir, MANIFEST):
        return None
    return json.loads(storage.read_bytes(path))


def _write_manifest(storage: Storage, out_dir: str, manifest: dict) -> None:
    storage.write_bytes(storage.path(out_dir, MANIFEST), json.dumps(manifest, indent=2).encode())
