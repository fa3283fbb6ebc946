"""Decide: apply the rules and the composite to stored scores; filter, mark for review, redact PII. No model runs.

Reads the scored rows (``score_models``), publishes ``quality`` (adds ``quality`` in [0, 1] and ``quality_verdict``:
``pass`` or ``review``) and sends failing rows to the ledger as ``filtered`` with the first rule that removed them
(``too_few_words``, detail ``heuristics.word_count=12<50``; ``low_quality`` below ``quality.min_quality``). PII is
redacted from kept rows when the ``pii`` scorer's ``redact`` is on (also with ``quality.enabled: false``, which
keeps every row unjudged: ``quality`` and ``quality_verdict`` null). Writes the score report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dctp_tasks
from dctp_tasks.config import PipelineConfig, QualityConfig
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.quality.base import Rule, Scorer
from dctp_tasks.quality.registry import LOW_QUALITY, build_scorers, scorer_settings
from dctp_tasks.quality.report import write_report
from dctp_tasks.records import append_step, params_hash, with_column
from dctp_tasks.staging import REJECTS, ROWS, stage_output, stage_rows, stage_version
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)

STAGE = "quality"
INPUT_STAGE = "score_models"
VERDICTS = ("pass", "review", "fail")
QUALITY_FIELDS = [pa.field("quality", pa.float32()), pa.field("quality_verdict", pa.string())]


@dataclass
class Decisions:
    """The day's decisions, in file order: composite, verdict, and for failed rows the rule and its detail."""

    quality: np.ndarray
    verdict: np.ndarray  # index into VERDICTS
    reason: np.ndarray  # object: rule name or None
    detail: np.ndarray  # object: "field=value>threshold" or None
    scores: dict[str, dict[str, np.ndarray]]
    domains: np.ndarray


def decide_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, input_stage: str = INPUT_STAGE,
               input_version: str | None = None, source_dag_id: str | None = None) -> StageResult:
    """Filter and mark date ``dt`` from its stored scores; return counts (``dropped_<rule>``) and the report.

    The scores are ``input_stage``'s staged output of ``source_dag_id`` (default: this DAG): ``dctp_rescore``
    re-decides what ``dctp_daily`` scored and publishes under its own DAG id.
    """
    q = config.quality
    scores_dag = source_dag_id or dag_id
    # Resolved once, and recorded: the export names the scores its rows were decided from, so a later re-decision
    # (dctp_rescore) reads exactly these scores, whatever has been published since.
    scores_version = input_version or stage_version(storage, scores_dag, dt, input_stage).rsplit("/v-", 1)[-1]
    in_dir = stage_rows(storage, scores_dag, dt, input_stage, scores_version)
    scorers = build_scorers(q) if q.enabled else []
    step = params_hash({k: v for k, v in q.model_dump(mode="json").items() if k != "scorers"})
    with Timer() as timer:
        decisions = decide_scores(storage, in_dir, q, scorers, config.batch_size) if q.enabled \
            else unjudged(storage, in_dir)
        redact = redactor(q)
        schema = storage.parquet_schema(in_dir)
        schema = pa.schema([*schema, *[f for f in QUALITY_FIELDS if f.name not in schema.names]])
        offset = 0
        with stage_output(storage, dag_id, dt, STAGE) as out, out.writer(ROWS, schema=schema) as writer, \
                RejectWriter(storage, out.sub(REJECTS), dt, STAGE) as rejects:
            for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
                rows = slice(offset, offset + batch.num_rows)
                offset += batch.num_rows
                table = pa.Table.from_batches([batch])
                failed = decisions.verdict[rows] == VERDICTS.index("fail")
                dropped = table.filter(pa.array(failed))
                rejects.add_table(pa.table({
                    "doc_id": dropped.column("doc_id"), "source": dropped.column("source"),
                    "outcome": pa.array(["filtered"] * dropped.num_rows, pa.string()),
                    "reason": pa.array(decisions.reason[rows][failed], pa.string()),
                    "detail": pa.array(decisions.detail[rows][failed], pa.string()),
                }))
                kept = table.filter(pa.array(~failed))
                quality = decisions.quality[rows][~failed]
                verdicts = np.asarray((*VERDICTS, None), dtype=object)[decisions.verdict[rows][~failed]]
                for name, values in (("quality", pa.array(quality, pa.float32(), mask=np.isnan(quality))),
                                     ("quality_verdict", pa.array(verdicts, pa.string()))):
                    kept = with_column(kept, schema.field(name), values)
                if redact is not None:
                    kept = redact(kept)
                kept = with_column(kept, schema.field("lineage"),
                                   append_step(kept.column("lineage"), STAGE, dctp_tasks.__version__, step))
                writer.write(kept)
        centroids = _update_centroids(storage, dt, out.sub(ROWS), scorers, config.batch_size)
        counts = Counter(VERDICTS[v] for v in decisions.verdict.tolist() if v < len(VERDICTS))
        report = write_report(storage, dt, decisions, scorers, q, counts)
    result = StageResult(STAGE, storage.uri(out.sub(ROWS)), total=len(decisions.verdict), kept=writer.rows,
                         version=out.version)
    result.seconds = timer.seconds
    result.dropped_by_reason = Counter(r for r in decisions.reason.tolist() if r is not None)
    result.extra = {"scores_dag_id": scores_dag, "scores_stage": input_stage, "scores_version": scores_version,
                    "pass": counts["pass"], "review": counts["review"], "fail": counts["fail"],
                    "report": report.markdown_path, "plots": ",".join(report.plot_paths), **centroids,
                    **{f"mean_{k}": v for k, v in report.means.items()}}
    log.info("quality dt=%s: %d in, %d pass, %d review, %d fail (%s)", dt, result.total, counts["pass"],
             counts["review"], counts["fail"],
             ", ".join(f"{k} {v}" for k, v in result.dropped_by_reason.most_common()))
    return result


def unjudged(storage: Storage, in_dir: str) -> Decisions:
    """Return the decisions of a day nobody judged (``quality.enabled: false``): every row kept, no verdict."""
    n = storage.count_rows(in_dir)
    return Decisions(np.full(n, np.nan), np.full(n, len(VERDICTS), dtype=np.int8), np.full(n, None, dtype=object),
                     np.full(n, None, dtype=object), {}, np.full(n, None, dtype=object))


def decide_scores(storage: Storage, in_dir: str, q: QualityConfig, scorers: list[Scorer],
                  batch_size: int) -> Decisions:
    """Read only ``domain`` and ``scores`` of the day and decide every row (memory: the day's numbers)."""
    scores, domains = read_scores(storage, in_dir, scorers, batch_size)
    n = len(domains)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    for scorer in scorers:
        for rule in scorer.rules:
            limits = rule_thresholds(q, scorer, rule, domains)
            values = scores[scorer.name][rule.field]
            fails = rule.fails(values, limits) & (reason == None)  # noqa: E711 - elementwise on object arrays
            if fails.any():
                reason[fails] = rule.name
                label = rule.field if rule.field == scorer.name else f"{scorer.name}.{rule.field}"
                detail[fails] = [f"{label}={_fmt(v)}{rule.op}{_fmt(t)}"
                                 for v, t in zip(values[fails].tolist(), limits[fails].tolist(), strict=True)]
    quality = composite(q, scorers, scores, domains)
    if q.min_quality is not None:
        with np.errstate(invalid="ignore"):
            low = (quality < q.min_quality) & (reason == None)  # noqa: E711
        reason[low] = LOW_QUALITY
        detail[low] = [f"quality={v:.2f}<{q.min_quality:.2f}" for v in quality[low].tolist()]
    verdict = np.zeros(n, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        verdict[quality < q.review_below] = VERDICTS.index("review")
    verdict[reason != None] = VERDICTS.index("fail")  # noqa: E711
    return Decisions(quality, verdict, reason, detail, scores, domains)


def rule_thresholds(q: QualityConfig, scorer: Scorer, rule: Rule, domains: np.ndarray) -> np.ndarray:
    """Return each row's threshold for ``rule`` (NaN: off): the domain's, else the config's, else the default."""
    key = f"{scorer.name}.{rule.name}"
    default = q.thresholds[key] if key in q.thresholds else rule.threshold
    limits = np.full(len(domains), np.nan if default is None else default, dtype=np.float64)
    for domain, overrides in q.domain_thresholds.items():
        if key in overrides:
            value = overrides[key]
            limits[domains == domain] = np.nan if value is None else value
    return limits


def composite(q: QualityConfig, scorers: list[Scorer], scores: dict[str, dict[str, np.ndarray]],
              domains: np.ndarray) -> np.ndarray:
    """Return the weighted mean of the scorers' quality contributions, ignoring the ones a row lacks (NaN)."""
    n = len(domains)
    total, weight = np.zeros(n), np.zeros(n)
    for scorer in scorers:
        part = scorer.quality(scores[scorer.name], domains)
        w = q.weights.get(scorer.name, 1.0)
        if part is None or w == 0:
            continue
        part = np.clip(np.asarray(part, dtype=np.float64), 0.0, 1.0)
        present = ~np.isnan(part)
        total[present] += w * part[present]
        weight[present] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)


def read_scores(storage: Storage, in_dir: str, scorers: list[Scorer],
                 batch_size: int) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    parts: dict[str, dict[str, list]] = {s.name: {f.name: [] for f in s.fields} for s in scorers}
    domains = []
    if "scores" not in storage.parquet_schema(in_dir).names:
        raise ValueError(f"{storage.uri(in_dir)} holds no scores: the score tasks did not run on it (were they "
                         "skipped, or quality.enabled false when it was scored?)")
    for batch in storage.iter_batches(in_dir, batch_size=batch_size, columns=["domain", "scores"]):
        struct = batch.column("scores")
        present = {f.name for f in struct.type}
        for scorer in scorers:
            if scorer.name not in present:
                raise ValueError(f"scores.{scorer.name} is missing from {storage.uri(in_dir)}: scorer "
                                 f"{scorer.name} was enabled after this date was scored; re-run its score task")
            sub = struct.field(scorer.name)
            for f in scorer.fields:
                column = sub.field(f.name)
                if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) \
                        or pa.types.is_boolean(column.type):
                    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
                else:
                    values = np.asarray(column.to_pylist(), dtype=object)
                parts[scorer.name][f.name].append(values)
        domains.append(np.asarray(batch.column("domain").to_pylist(), dtype=object))
    scores = {s: {f: np.concatenate(v) if v else np.zeros(0) for f, v in fields.items()}
              for s, fields in parts.items()}
    return scores, np.concatenate(domains) if domains else np.zeros(0, dtype=object)


def _update_centroids(storage: Storage, dt: str, out_dir: str, scorers: list[Scorer], batch_size: int) -> dict:
    """Store the kept docs' per-domain embedding sums: the accepted data later dates' relevance compares with.

    Vectors are semantic dedup's stored ones (the kept rows are its survivors), so normally nothing is encoded.
    """
    relevance = next((s for s in scorers if s.name == "relevance"), None)
    if relevance is None or not relevance.config.from_accepted:
        return {}
    from dctp_tasks.quality.embeddings import EmbeddingLookup
    from dctp_tasks.quality.relevance import update_centroids

    lookup = EmbeddingLookup(storage, dt, relevance.config.embedding)
    update_centroids(storage, dt, storage.iter_batches(out_dir, batch_size=batch_size,
                                                       columns=["doc_id", "text", "domain"]), lookup)
    return {"centroid_vectors_reused": lookup.reused, "centroid_vectors_encoded": lookup.encoded}


def redactor(q: QualityConfig):
    """Return a function redacting PII in a table's text columns, or ``None`` when PII is not redacted.

    The ``pii`` scorer's settings decide, whether or not quality is judged at all: switching scoring off must not
    switch redaction off with it.
    """
    pii_settings = next((settings for name, _, settings in scorer_settings(q) if name == "pii"), None)
    if pii_settings is None:
        return None
    from dctp_tasks.quality.pii import PiiConfig

    pii = PiiConfig.model_validate(pii_settings)
    if not pii.redact:
        return None
    from dctp_tasks.pii import redact_pii

    def redact(table: pa.Table) -> pa.Table:
        for name in ("text", "prompt", "response"):
            if name in table.column_names and table.num_rows:
                redacted, _ = redact_pii(table.column(name).combine_chunks(), pii.types)
                table = with_column(table, table.schema.field(name), redacted)
        return table

    return redact


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
