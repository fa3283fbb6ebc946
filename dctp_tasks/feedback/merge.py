"""Merge feedback: every judgement so far becomes a consensus per document, and the consensus changes the day.

``merge_judgements`` computes the consensus (weighted majority, or Dawid–Skene once enough documents overlap),
expert reliability and agreement, and the source and domain sampling weights, stores them as one merge run, and
assigns ``needs_review`` documents to one more expert. ``merge_feedback_day`` then rewrites the decided day: rows
with ``bad`` consensus leave with ledger reason ``expert_rejected``, ``review`` rows with ``good`` consensus become
``pass``, every row gets its ``sampling_weight`` and its ``consensus``. Earlier dates' rejected documents are
retracted from the Delta table by the export (``dctp_tasks.export.retract``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.dedup.report import table_cell, write_report
from dctp_tasks.feedback import consensus as cs
from dctp_tasks.feedback.consensus_db import (
    LABEL_NAMES,
    MergeRecord,
    assign_reviews,
    effective_labels,
    item_facts,
    item_texts,
    latest_annotation_id,
    merge_run,
    record_merge,
)
from dctp_tasks.feedback.store import FeedbackStore
from dctp_tasks.feedback.weights import Weights, group_weights, row_weights
from dctp_tasks.ledger import RejectWriter, judgement_ids
from dctp_tasks.records import append_step, params_hash, with_column
from dctp_tasks.source_labels import publish_source_labels
from dctp_tasks.staging import REJECTS, ROWS, stage_output, stage_rows
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)

STAGE = "merge_feedback"
INPUT_STAGE = "quality"
EXPERT_REJECTED = "expert_rejected"
"""Ledger reason of rows removed because the experts' consensus is ``bad``."""
CONSENSUS_FIELD = pa.field("consensus", pa.string())
"""Added column: the document's consensus (``good``, ``bad``, ``needs_review``), null when nobody judged it."""
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_-]+")  # names come from data: no '/' or '.' that MLflow would normalise
_MAX_GROUP_METRICS = 50
"""Sources, domains, experts and expert pairs logged to MLflow at most, each (the report lists them all)."""


@dataclass
class Merged:
    """One merge run: what it stored, and the consensus per judged document."""

    merge_id: int
    changed: int
    method: str
    doc_ids: np.ndarray  # object
    dts: np.ndarray  # object
    labels: np.ndarray  # object: good, bad, needs_review
    annotation_ids: list[list[int]]
    synthetic: np.ndarray
    item_ids: np.ndarray
    weights: Weights
    stats: dict
    experts: list[dict]
    reviews: dict[int, str] = field(default_factory=dict)

    def docs(self, label: str) -> dict[str, tuple[str, list[int]]]:
        """Return ``doc_id -> (dt, judgement ids)`` of the documents whose consensus is ``label``."""
        where = np.flatnonzero(self.labels == label)
        return {self.doc_ids[i]: (self.dts[i], self.annotation_ids[i]) for i in where}


def merge_judgements(store: FeedbackStore, config: PipelineConfig, *, dag_id: str, run_id: str | None,
                     dt: str | None, only_if_new: bool = False) -> Merged | None:
    """Compute the consensus of every judged document from every effective judgement; store it as a merge run
    (``dt``: the daily run's date, ``None`` for ``dctp_feedback_apply``) and assign one more expert where needed.

    With ``only_if_new``, return ``None`` without storing anything when no row was added to the audit trail since
    the last merge run."""
    cfg = config.feedback
    last_row = latest_annotation_id(store)
    if only_if_new:
        previous = merge_run(store)
        if previous is not None and previous["stats"].get("last_annotation_id") == last_row:
            return None
    labels = effective_labels(store)
    item_ids, item_index = np.unique(labels.item_id, return_inverse=True)
    names, expert_index = np.unique(labels.expert.astype(str), return_inverse=True)
    roster = store.roster
    weights = np.array([roster[n].weight if n in roster else 1.0 for n in names], dtype=np.float64)
    judgements = cs.Judgements(item_index.astype(np.int64), expert_index.astype(np.int64), labels.label,
                               len(item_ids), len(names))
    result = cs.merge_consensus(judgements, weights, cfg)
    facts = item_facts(store, item_ids)
    label_names = np.array([LABEL_NAMES[int(v)] for v in result.label], dtype=object)
    ids_per_item = _group(labels.annotation_id, item_index, len(item_ids))
    decided = label_names != LABEL_NAMES[cs.NEEDS_REVIEW]
    # a synthetic document's label says nothing about the source or domain its seed came from
    counted = decided & ~np.asarray(facts.synthetic, dtype=bool)
    group = group_weights(facts.source[counted], facts.domain[counted], result.label[counted] == cs.GOOD, cfg)
    experts = [{"expert": str(name), "judgements": int(result.judgements[e]), "reliability": result.reliability[e],
                "agreement": result.agreement[e], "flagged": bool(result.flagged[e]),
                "weight": float((1.0 if result.method == cs.DAWID_SKENE else weights[e])
                                * (cfg.flagged_weight if result.flagged[e] else 1.0))}
               for e, name in enumerate(names)]
    stats = agreement_stats(judgements, names, facts, dt)
    stats.update({"good": int((result.label == cs.GOOD).sum()), "bad": int((result.label == cs.BAD).sum()),
                  "needs_review": int((~decided).sum()), "shared_items": int(result.shared_items),
                  "iterations": int(result.iterations), "skips": labels.skips, "last_annotation_id": last_row,
                  "flagged": [str(names[e]) for e in np.flatnonzero(result.flagged)],
                  "weights": group.as_dict()})
    rows = [{"item_id": int(item_ids[i]), "label": label_names[i], "p_good": float(result.p_good[i]),
             "confidence": float(result.confidence[i]), "judgements": int(result.n_judgements[i]),
             "method": result.method, "annotation_ids": json.dumps(ids_per_item[i])} for i in range(len(item_ids))]
    merge_id, changed = record_merge(store, MergeRecord(
        dag_id=dag_id, run_id=run_id, dt=dt, method=result.method, judgements=len(labels.label),
        documents=len(item_ids), stats=stats, config_hash=config.config_hash(), consensus_rows=rows,
        experts=experts, weights=[{"kind": g.kind, "key": g.key, "good": g.good, "bad": g.bad, "share": g.share,
                                   "weight": g.weight} for g in group.groups]))
    reviews = assign_reviews(store, item_ids[~decided].tolist(), cfg.max_judgements, labels)
    log.info("merge %d (%s): %d judgements on %d documents; %d good, %d bad, %d need review (%d assigned); %d "
             "changed; alpha %.3f", merge_id, result.method, len(labels.label), len(item_ids), stats["good"],
             stats["bad"], stats["needs_review"], len(reviews), changed, stats["alpha"])
    return Merged(merge_id, changed, result.method, facts.doc_id, facts.dt, label_names, ids_per_item,
                  facts.synthetic, item_ids, group, stats, experts, reviews)


def agreement_stats(judgements: cs.Judgements, names: np.ndarray, facts, dt: str | None) -> dict:
    """Return Krippendorff's alpha overall and for date ``dt``'s batch, and Cohen's kappa per expert pair."""
    stats: dict = {"alpha": cs.krippendorff_alpha(judgements)}
    if dt is not None:
        in_batch = np.flatnonzero(facts.dt == dt)
        keep = np.isin(judgements.item, in_batch)
        stats["alpha_batch"] = cs.krippendorff_alpha(cs.Judgements(
            judgements.item[keep], judgements.expert[keep], judgements.label[keep], judgements.n_items,
            judgements.n_experts))
    stats["kappa"] = {f"{names[a]}|{names[b]}": {"kappa": kappa, "items": n}
                      for (a, b), (kappa, n) in sorted(cs.cohen_kappa_pairs(judgements).items())}
    return stats


def merge_feedback_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, store: FeedbackStore,
                       input_stage: str = INPUT_STAGE, input_version: str | None = None,
                       run_id: str | None = None, learn: bool = True) -> StageResult:
    """Merge every judgement so far and apply the consensus to date ``dt``'s decided rows; publish the result.

    With ``learn`` (the daily run), also publish the date's source labels for the credibility scorer and retrain the
    expert-quality classifier when enough labels are new; a re-decision (``dctp_rescore``) changes neither."""
    cfg = config.feedback
    in_dir = stage_rows(storage, dag_id, dt, input_stage, input_version)
    if not cfg.enabled:
        result = StageResult(STAGE, storage.uri(in_dir), version=input_version, output_stage=input_stage)
        result.total = result.kept = storage.count_rows(in_dir)
        result.extra = {"switched_off": 1}
        return result
    with Timer() as timer:
        merged = merge_judgements(store, config, dag_id=dag_id, run_id=run_id, dt=dt)
        if learn:
            publish_source_labels(storage, dt, {g.key: {"good": g.good, "bad": g.bad}
                                                for g in merged.weights.groups if g.kind == "source" and g.key})
        rejected = merged.docs("bad") if cfg.remove_rejected else {}
        changes = _apply(storage, config, dag_id, dt, in_dir, merged, rejected)
        trained = retrain(storage, config, store, merged, dt) if learn else {"status": "not_in_a_rescore"}
        report = write_report(storage, dt, STAGE, render_report(dt, config, merged, changes, trained))
    result = StageResult(STAGE, storage.uri(changes["out_dir"]), total=changes["total"], kept=changes["kept"],
                         version=changes["version"])
    result.seconds = timer.seconds
    if changes["rejected"]:
        result.dropped_by_reason[EXPERT_REJECTED] = changes["rejected"]
    earlier = sum(1 for day, _ in rejected.values() if day != dt)
    result.extra = {"merge_id": merged.merge_id, "method": merged.method, "changed": merged.changed,
                    "promoted": changes["promoted"], "boosted": changes["boosted"], "rejected_earlier": earlier,
                    "reviews_assigned": len(merged.reviews), "report": report,
                    "classifier_status": trained.get("status", ""),
                    **merge_metrics(merged), **{f"classifier_{k}": v for k, v in trained.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    return result


def _apply(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, in_dir: str, merged: Merged,
           rejected: dict[str, tuple[str, list[int]]]) -> dict:
    """Write the day with the consensus applied; return counts and where it went.

    Only the judgements of documents queued on ``dt`` apply: a judgement is about the text the expert saw, and a
    source may send a changed record under the same id on another date."""
    cfg = config.feedback
    today = merged.dts == dt
    labels = pa.array(merged.labels[today].tolist(), pa.string())
    doc_ids = pa.array(merged.doc_ids[today].tolist(), pa.string())
    bad = pa.array(sorted(d for d, (day, _) in rejected.items() if day == dt), pa.string())
    step = params_hash(cfg.model_dump(mode="json"))
    counts = {"total": 0, "kept": 0, "rejected": 0, "promoted": 0, "boosted": 0}
    schema = storage.parquet_schema(in_dir)
    schema = pa.schema([*schema, *([CONSENSUS_FIELD] if CONSENSUS_FIELD.name not in schema.names else [])])
    with stage_output(storage, dag_id, dt, STAGE) as out, out.writer(ROWS, schema=schema) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, STAGE) as rejects:
        for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
            table = pa.Table.from_batches([batch])
            counts["total"] += table.num_rows
            gone = pc.is_in(table.column("doc_id"), value_set=bad).to_numpy(zero_copy_only=False)
            dropped = table.filter(pa.array(gone))
            rejects.add_table(pa.table({
                "doc_id": dropped.column("doc_id"), "source": dropped.column("source"),
                "outcome": pa.array(["filtered"] * dropped.num_rows, pa.string()),
                "reason": pa.array([EXPERT_REJECTED] * dropped.num_rows, pa.string()),
                "detail": pa.array([f"consensus bad by judgements {judgement_ids(rejected[d][1])}"
                                    for d in dropped.column("doc_id").to_pylist()], pa.string()),
            }))
            counts["rejected"] += dropped.num_rows
            kept = table.filter(pa.array(~gone))
            where = pc.index_in(kept.column("doc_id"), value_set=doc_ids)
            consensus = pc.take(labels, where)
            good = pc.fill_null(pc.equal(consensus, "good"), False)
            if "quality_verdict" in kept.column_names:
                promote = pc.and_(good, pc.fill_null(pc.equal(kept.column("quality_verdict"), "review"), False))
                counts["promoted"] += int(pc.sum(promote).as_py() or 0)
                kept = with_column(kept, kept.schema.field("quality_verdict"),
                                   pc.if_else(promote, "pass", kept.column("quality_verdict")))
            counts["boosted"] += int(pc.sum(good).as_py() or 0)
            weight = row_weights(kept.column("source"), kept.column("domain"),
                                 kept.column("quality") if "quality" in kept.column_names else None,
                                 good.to_numpy(zero_copy_only=False), merged.weights, cfg)
            kept = with_column(kept, kept.schema.field("sampling_weight"), pa.array(weight, pa.float64()))
            kept = with_column(kept, CONSENSUS_FIELD, consensus)
            kept = with_column(kept, kept.schema.field("lineage"),
                               append_step(kept.column("lineage"), STAGE, dctp_tasks.__version__, step))
            writer.write(kept)
            counts["kept"] += kept.num_rows
    return {**counts, "out_dir": out.sub(ROWS), "version": out.version}


def retrain(storage: Storage, config: PipelineConfig, store: FeedbackStore, merged: Merged, dt: str) -> dict:
    """Retrain the expert-quality classifier on every good/bad consensus of a real document, when enough are new."""
    from dctp_tasks.feedback.retrain import LabeledDocs, retrain_expert_classifier

    decided = np.flatnonzero(merged.labels != "needs_review")
    item_ids = merged.item_ids[decided].tolist()

    def texts() -> list[str]:  # read only when a training is due
        found = item_texts(store, item_ids)
        return [found.get(i, "") for i in item_ids]

    labeled = LabeledDocs(doc_ids=merged.doc_ids[decided].tolist(), dts=merged.dts[decided].tolist(), texts=texts,
                          y=(merged.labels[decided] == "good").astype(np.int64),
                          synthetic=merged.synthetic[decided])
    return retrain_expert_classifier(storage, config, labeled, dt)


def render_report(dt: str, config: PipelineConfig, merged: Merged, changes: dict, trained: dict) -> str:
    """Return the Markdown report: consensus, agreement, experts, weights, what changed today."""
    s = merged.stats
    lines = [f"# Feedback merge, dt={dt}", "",
             f"Merge run {merged.merge_id} ({merged.method.replace('_', ' ')}): {len(merged.doc_ids):,} judged "
             f"documents; **{s['good']:,} good, {s['bad']:,} bad, {s['needs_review']:,} need review** "
             f"({len(merged.reviews)} assigned to one more expert); {merged.changed:,} consensus changes.", "",
             f"Krippendorff's alpha: {_num(s['alpha'])} overall, {_num(s.get('alpha_batch'))} on this date's batch.",
             "", f"Today: {changes['rejected']:,} rows removed (`{EXPERT_REJECTED}`), {changes['promoted']:,} review "
             f"rows promoted to pass, {changes['boosted']:,} rows with good consensus weighted up; "
             f"{sum(1 for d, _ in merged.docs('bad').values() if d != dt):,} documents of other dates have bad "
             "consensus (the export retracts those still in the table).", "",
             "| expert | judgements | reliability | agreement | weight | flagged |", "|---|---:|---:|---:|---:|---|"]
    floor = config.feedback.reliability_floor
    lines += [f"| {table_cell(e['expert'])} | {e['judgements']} | {_num(e['reliability'])} | {_num(e['agreement'])} | "
              f"{e['weight']:.2f} | {'**below ' + format(floor, '.2f') + '**' if e['flagged'] else ''} |"
              for e in merged.experts]
    if s["kappa"]:
        lines += ["", "| expert pair | Cohen's kappa | shared documents |", "|---|---:|---:|"]
        lines += [f"| {table_cell(pair.replace('|', ' / '))} | {_num(k['kappa'])} | {k['items']} |"
                  for pair, k in s["kappa"].items()]
    lines += ["", f"Sampling weights (prior share judged good {merged.weights.prior_share:.2f}, bounded "
                  f"[{config.feedback.weight_floor}, {config.feedback.weight_ceiling}]):", "",
              "| group | good | bad | posterior share | weight |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {g.kind} {table_cell(g.key or '(none)')} | {g.good} | {g.bad} | {g.share:.3f} | {g.weight:.3f} |"
              for g in merged.weights.groups]
    lines += ["", "Expert-quality classifier: " + ", ".join(f"{k} {v}" for k, v in trained.items()) + "."]
    return "\n".join(lines) + "\n"


def merge_metrics(merged: Merged) -> dict[str, float]:
    s = merged.stats
    out = {"judgements": float(sum(map(len, merged.annotation_ids))),
           "documents": float(len(merged.doc_ids)), "good": s["good"], "bad": s["bad"],
           "needs_review": s["needs_review"], "alpha": s["alpha"], "flagged_experts": len(s["flagged"])}
    if s.get("alpha_batch") is not None:
        out["alpha_batch"] = s["alpha_batch"]
    for e in merged.experts[:_MAX_GROUP_METRICS]:
        for key in ("reliability", "agreement"):
            if e[key] == e[key]:  # not NaN
                out[f"{key}.{_metric(e['expert'])}"] = e[key]
    for pair, k in list(s["kappa"].items())[:_MAX_GROUP_METRICS]:
        if k["kappa"] == k["kappa"]:
            out[f"kappa.{_metric(pair.replace('|', '--'))}"] = k["kappa"]
    for kind in ("source", "domain"):
        groups = sorted((g for g in merged.weights.groups if g.kind == kind), key=lambda g: -(g.good + g.bad))
        for g in groups[:_MAX_GROUP_METRICS]:
            out[f"weight.{kind}.{_metric(g.key or 'none')}"] = g.weight
    return {k: v for k, v in out.items() if v == v}


def _metric(name: str) -> str:
    """Return ``name`` as an MLflow metric name part: data-given names may hold anything."""
    return _METRIC_NAME.sub("_", name)[:100] or "_"


def _group(values: np.ndarray, index: np.ndarray, n: int) -> list[list[int]]:
    """Return ``values`` grouped by ``index`` (0..n-1), each group sorted."""
    order = np.lexsort((values, index))
    bounds = np.searchsorted(index[order], np.arange(n + 1))
    ordered = values[order].tolist()
    return [ordered[bounds[i]:bounds[i + 1]] for i in range(n)]



def _num(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"

