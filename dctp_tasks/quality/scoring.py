"""Score a day: run the enabled CPU scorers (stage ``score``) or GPU scorers (stage ``score_models``) batch by batch.

Each writes its input rows plus ``scores``: a struct with one sub-struct per scorer (``scores.{scorer}.{field}``),
keeping the sub-structs earlier stages wrote. Scoring removes no row. A stage whose output would not change is not
recomputed (``_manifest.json`` in its published version records what the scores depend on: the input files, the
scorers' settings, a fingerprint of each scorer's code, the models' own versions and the history they read), so
re-deciding with new thresholds never re-runs a model, and new code or a retrained model always does.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from collections import Counter
from functools import cache
from typing import Literal

import pyarrow as pa

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.publish import NotPublished, current
from dctp_tasks.quality.base import Scorer, ScoringContext
from dctp_tasks.quality.registry import build_scorers, scorer_settings
from dctp_tasks.records import append_step, with_column
from dctp_tasks.shards import (
    Shard,
    ShardedStage,
    ShardOutput,
    iter_shard,
    plan_shards,
    publish_shards,
    rows_uri,
    shard_stats,
)
from dctp_tasks.staging import ROWS, stage_rows, stage_version
from dctp_tasks.stats import StageResult
from dctp_tasks.storage import Storage, staging_dir

log = logging.getLogger(__name__)

STAGES = {"cpu": "score", "gpu": "score_models"}
INPUT_STAGES = {"cpu": "dedup_semantic", "gpu": "score"}
MANIFEST = "_manifest.json"


def score_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, device: Literal["cpu", "gpu"], *,
              input_stage: str | None = None, input_version: str | None = None) -> StageResult:
    """Add the ``cpu`` or ``gpu`` scorers' scores to every row of date ``dt``; return counts and per-scorer speed.

    With no scorer of that kind enabled nothing is written: the result's ``output_stage`` and ``version`` name the
    input, which passes on unchanged.
    """
    return SCORE.run_all(storage, config, dag_id, dt, device, input_stage=input_stage, input_version=input_version)


def plan_score(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, device: Literal["cpu", "gpu"], *,
               input_stage: str | None = None, input_version: str | None = None) -> list[Shard]:
    """Split the day into shards (``sharding.shards.score`` / ``score_models``), or plan one shard with nothing to
    do: when no scorer of the kind is enabled (``mode`` ``pass``) or the stored scores are still valid (``reuse``).
    """
    stage = STAGES[device]
    in_stage = input_stage or INPUT_STAGES[device]
    in_version = input_version or current_version(storage, dag_id, dt, in_stage)
    in_dir = stage_rows(storage, dag_id, dt, in_stage, in_version)
    scorers = _scorers(config, device)
    if not scorers:
        log.info("%s dt=%s: no %s scorer enabled; %s passes through", stage, dt, device, in_stage)
        return [Shard(dag_id, dt, stage, in_version or "", 0, 1, 0, 0, in_stage, in_version,
                      {"device": device, "mode": "pass"})]
    key = _cache_key(storage, in_dir, config, device, scorers, ScoringContext(storage, dt))
    cached = _cached(storage, dag_id, dt, stage, key)
    if cached is not None:
        manifest, version = cached
        log.info("%s dt=%s: input, scorers, code and models unchanged since %s; scores reused, no model run",
                 stage, dt, manifest["written_at"])
        return [Shard(dag_id, dt, stage, version, 0, 1, 0, 0, in_stage, in_version,
                      {"device": device, "mode": "reuse"})]
    return plan_shards(storage, config, dag_id, dt, stage, input_stage=in_stage, input_version=in_version,
                       extra={"device": device, "mode": "score", "key": key})


def score_shard(storage: Storage, config: PipelineConfig, shard: Shard) -> dict:
    """Score one shard's rows into its part of the stage's new version; return its counts and seconds per scorer."""
    if shard.extra["mode"] != "score":
        return {}
    scorers = _scorers(config, shard.extra["device"])
    context = ScoringContext(storage, shard.dt)
    seconds = {s.name: 0.0 for s in scorers}
    names = ",".join(s.name for s in scorers)
    log.info("%s: scoring with %s", shard.label, names)
    for scorer in scorers:
        start = time.perf_counter()
        scorer.prepare(context)
        seconds[scorer.name] += time.perf_counter() - start
    schema = _output_schema(storage.parquet_schema(shard.input(storage)), scorers)
    params = hashlib.sha256(shard.extra["key"].encode()).hexdigest()[:16]
    out = ShardOutput(storage, shard)
    with out.writer(ROWS, schema=schema) as writer:
        for batch in iter_shard(storage, shard, batch_size=config.batch_size):
            table = score_batch(batch, scorers, seconds)
            table = with_column(table, table.schema.field("lineage"),
                                append_step(table.column("lineage"), shard.stage, dctp_tasks.__version__, params))
            writer.write(table)
    embedded = [lookup.stats for lookup in context.extra.get("embeddings", {}).values()]
    return out.done({"rows": writer.rows, "seconds": seconds,
                     "embeddings_reused": sum(e["reused"] for e in embedded),
                     "embeddings_encoded": sum(e["encoded"] for e in embedded)})


def finish_score(storage: Storage, config: PipelineConfig, shards: list[Shard]) -> StageResult:
    """Publish the version every shard wrote, with the manifest that lets a later run reuse it; return counts."""
    first = shards[0]
    mode = first.extra["mode"]
    if mode == "pass":
        in_dir = first.input(storage)
        result = StageResult(first.stage, storage.uri(in_dir), version=first.input_version,
                             output_stage=first.input_stage)
        result.total = result.kept = storage.count_rows(in_dir)
        result.extra = {"scorers": ""}
        return result
    if mode == "reuse":
        folder = stage_version(storage, first.dag_id, first.dt, first.stage, first.version)
        manifest = storage.read_json(storage.path(folder, MANIFEST))
        result = StageResult(first.stage, storage.uri(folder, ROWS), version=first.version)
        result.total = result.kept = manifest["rows"]
        result.extra = {**manifest["extra"], "cached": 1}
        return result
    stats = shard_stats(storage, shards)
    rows = sum(s["rows"] for s in stats)
    seconds = Counter()
    for s in stats:
        seconds.update(s["seconds"])
    names = ",".join(seconds)
    extra = {"scorers": names, "cached": 0, "shards": len(shards),
             "embeddings_reused": sum(s["embeddings_reused"] for s in stats),
             "embeddings_encoded": sum(s["embeddings_encoded"] for s in stats),
             **{f"{name}_docs_per_s": round(rows / s, 1) if s > 0 else 0.0 for name, s in seconds.items()}}
    storage.write_bytes(storage.path(first.output(), MANIFEST), json.dumps({
        "key": first.extra["key"], "rows": rows, "extra": extra,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2).encode())
    publish_shards(storage, shards, meta={"key": first.extra["key"]})
    result = StageResult(first.stage, rows_uri(storage, first), total=rows, kept=rows, version=first.version)
    result.seconds = sum(seconds.values())
    result.extra = extra
    log.info("%s dt=%s: %d rows scored by %s in %d shard(s), %.1fs (%s)", first.stage, first.dt, rows, names,
             len(shards), result.seconds, ", ".join(f"{n} {s:.1f}s" for n, s in seconds.items()))
    return result


SCORE = ShardedStage(plan_score, {"shard": score_shard}, finish_score)


def _scorers(config: PipelineConfig, device: str) -> list[Scorer]:
    if not config.quality.enabled:
        return []
    return [s for s in build_scorers(config.quality) if s.gpu == (device == "gpu")]


def score_batch(batch: pa.RecordBatch, scorers: list[Scorer], seconds: dict[str, float]) -> pa.Table:
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
            files.append([path.rsplit("/", 1)[-1], storage.parquet_footer(path)])
    mine = {s.name for s in scorers}
    settings = [(name, settings) for name, _, settings in scorer_settings(config.quality) if name in mine]
    payload = {"files": files, "scorers": settings, "device": device, "batch_size": config.batch_size,
               "code": dctp_tasks.__version__,
               "code_fingerprints": {s.name: code_fingerprint(type(s)) for s in scorers},
               "tokens": [s.cache_token(context) for s in scorers]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@cache
def code_fingerprint(scorer: type) -> str:
    """Return a hash of the source of the scorer's module and of the modules every score goes through.

    A scorer fixed or changed between two runs (same package version) gets new stored scores.
    """
    import dctp_tasks.batching
    import dctp_tasks.embeddings
    import dctp_tasks.models
    import dctp_tasks.quality.base
    import dctp_tasks.quality.embeddings
    import dctp_tasks.quality.lm

    modules = {inspect.getmodule(scorer), dctp_tasks.quality.base, dctp_tasks.quality.embeddings,
               dctp_tasks.embeddings, dctp_tasks.batching, dctp_tasks.models, dctp_tasks.quality.lm,
               inspect.getmodule(code_fingerprint)}
    digest = hashlib.sha256()
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(module.__name__.encode() + b"\0" + inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def current_version(storage: Storage, dag_id: str, dt: str, stage: str) -> str | None:
    """Return the version of ``stage``'s staged output that is current for ``dt`` (``None``: an older layout)."""
    return (current(storage, staging_dir(dag_id, dt, stage)) or {}).get("version")


def _cached(storage: Storage, dag_id: str, dt: str, stage: str, key: str) -> tuple[dict, str] | None:
    """Return the manifest and version of the current output when it was computed for ``key``."""
    pointer = current(storage, staging_dir(dag_id, dt, stage))
    if pointer is None or pointer.get("key") != key:
        return None
    try:
        folder = stage_version(storage, dag_id, dt, stage, pointer["version"])
        return storage.read_json(storage.path(folder, MANIFEST)), pointer["version"]
    except (NotPublished, FileNotFoundError):
        return None
