"""Select for annotation: choose, within a budget, the day's documents whose expert judgement teaches most.

Reads the decided day (``quality``'s kept rows, and the scores of every row ``decide`` judged) and stores one batch
per date in the feedback store: the chosen documents as the expert will see them (PII redacted), why each was
picked (strategy, its score, stratum), the nearest rows dedup removed as its duplicates, and who judges it. No
model runs: scores are the stored ones and vectors semantic dedup's. A re-run replaces the date's batch only while
nobody has judged any of it.
"""

from __future__ import annotations

import logging
import math
import posixpath
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.config import AnnotationConfig, PipelineConfig
from dctp_tasks.dedup.report import report_path, table_cell, write_report
from dctp_tasks.feedback import strategies as al
from dctp_tasks.feedback.store import FeedbackStore, NewItem
from dctp_tasks.publish import NotPublished
from dctp_tasks.quality.base import Scorer
from dctp_tasks.quality.decide import VERDICTS, Decisions, decide_scores, redactor, unjudged
from dctp_tasks.quality.registry import build_scorers
from dctp_tasks.staging import REJECTS, stage_rejects, stage_rows, stage_version
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)

STAGE = "select_for_annotation"
INPUT_STAGE = "quality"
SCORES_STAGE = "score_models"
AUDIT = "audit"
"""The strategy name of the rows taken at random from the day's filtered rows."""
_SNAPSHOT_COLUMNS = ["doc_id", "text", "prompt", "response", "source", "domain", "lang", "synthetic"]
DEDUP_STAGES = ("dedup_exact", "dedup_near", "dedup_semantic")
"""The stages whose dropped rows name the document they duplicate (``duplicate_of``)."""
TEXT_STAGE = "normalize"
"""Where a removed duplicate's text is read: every dedup stage drops rows of normalize's output."""
MAX_DUPLICATES = 3
"""Duplicates shown with a queued document."""
DUPLICATE_TEXT_CHARS = 300
"""Characters of a duplicate's text shown."""
# the similarity near dedup (MinHash Jaccard) and semantic dedup (cosine) write into a duplicate's detail
_SIMILARITY = re.compile(r"(?:cosine|jaccard)\s*[=≈~]\s*([0-9]*\.?[0-9]+)")
_MAX_STRATUM_METRICS = 50


@dataclass
class Day:
    """Every row ``decide`` judged, in file order, with what the strategies read."""

    doc_ids: pa.Array
    strata: np.ndarray  # int index into ``names``
    names: list[str]
    kept: np.ndarray  # bool: not filtered
    decisions: Decisions
    scorers: list[Scorer]


def select_for_annotation_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *,
                              store: FeedbackStore, input_stage: str = INPUT_STAGE, input_version: str | None = None,
                              scores_dag_id: str | None = None, scores_stage: str = SCORES_STAGE,
                              scores_version: str | None = None, run_id: str | None = None,
                              mlflow_run_id: str | None = None) -> StageResult:
    """Choose date ``dt``'s batch and store it; return counts per strategy and stratum (``selected``, ``audit``)."""
    cfg = config.annotation
    kept_dir = stage_rows(storage, dag_id, dt, input_stage, input_version)
    result = StageResult(STAGE, storage.uri(kept_dir), version=input_version, output_stage=input_stage)
    with Timer() as timer:
        existing = store.batch(dt)
        result.total = storage.count_rows(kept_dir)  # the decided rows, filtered ones added below when selecting
        if cfg.budget == 0:
            result.extra = {"selected": 0, "switched_off": 1, "vectors_encoded": 0}
            log.info("select_for_annotation dt=%s: annotation.budget is 0, selection is off", dt)
        elif existing is not None and existing.judged:
            result.extra = {"selected": existing.items, "kept_judged_batch": 1, "batch_id": existing.batch_id,
                            "vectors_encoded": 0}
            if storage.exists(*report_path(dt, STAGE)):  # the kept batch's own report, logged with this run too
                result.extra["report"] = "/".join(report_path(dt, STAGE))
            log.info("select_for_annotation dt=%s: batch %d has %d judgements already; kept as it is", dt,
                     existing.batch_id, existing.judged)
        else:
            scores_dir = stage_rows(storage, scores_dag_id or dag_id, dt, scores_stage, scores_version)
            day = read_day(storage, scores_dir, config)
            if int(day.kept.sum()) != result.total:
                raise ValueError(f"dt={dt}: {kept_dir} holds {result.total} rows but the scores it was decided from "
                                 f"give {int(day.kept.sum())} kept: select from the scores decide read "
                                 "(scores_version)")
            queued = pa.array(store.queued_doc_ids(exclude_dt=dt), pa.string())
            available = ~pc.is_in(day.doc_ids, value_set=queued).to_numpy(zero_copy_only=False)
            source = VectorSource(storage, dt, config, scores_dir, day.doc_ids)
            labeled = expert_labels(storage, config, store, source)
            stats: dict[str, int] = {"committee_members": 0}
            picks = choose(day, available, cfg, config.quality.review_below, dt, source, labeled, stats)
            new_items = snapshot(storage, config, dt, day, picks, kept_dir, scores_dir,
                                 stage_rejects(storage, dag_id, dt, input_stage, input_version),
                                 dedup_dag_id=scores_dag_id or dag_id)
            assign(new_items, cfg, store.open_load(exclude_dt=dt))
            batch, written = store.replace_batch(
                dt=dt, dag_id=dag_id, run_id=run_id, budget=cfg.budget, config_hash=config.config_hash(),
                strategy_mix=strategy_mix(cfg), mlflow_run_id=mlflow_run_id, staged_version=input_version,
                new_items=new_items)
            if not written:  # judged while this run chose: the judged batch stays, and so does its report
                result.extra = {"selected": batch.items, "kept_judged_batch": 1, "batch_id": batch.batch_id,
                                "vectors_encoded": source.encoded}
            else:
                result.total = len(day.kept)
                result.kept = len(new_items)
                result.extra = {"selected": len(new_items), "batch_id": batch.batch_id,
                                "already_queued": int((~available).sum()), "vectors_encoded": source.encoded,
                                "committee_labels": 0 if labeled is None else len(labeled[1]), **stats,
                                **pick_metrics(new_items, day)}
                result.extra["report"] = write_report(storage, dt, STAGE, render_report(dt, cfg, day, available,
                                                                                       new_items))
                log.info("select_for_annotation dt=%s: %d of %d rows chosen into batch %d (%s)", dt, len(new_items),
                         len(day.kept), batch.batch_id,
                         ", ".join(f"{k} {v}" for k, v in Counter(i.strategy for i in new_items).most_common()))
    result.seconds = timer.seconds
    return result


def read_day(storage: Storage, scores_dir: str, config: PipelineConfig) -> Day:
    """Decide the scored day again from its stored scores (no model runs) and read its ids and strata."""
    q = config.quality
    scorers = build_scorers(q) if q.enabled else []
    decisions = decide_scores(storage, scores_dir, q, scorers, config.batch_size) if q.enabled \
        else unjudged(storage, scores_dir)
    fields = config.annotation.stratify_by
    table = storage.read_table(scores_dir, columns=["doc_id", *fields])
    if fields:
        parts = [pc.fill_null(table.column(f).combine_chunks(), "-") for f in fields]
        keys = pc.binary_join_element_wise(*parts, " / ") if len(parts) > 1 else parts[0]
        encoded = keys.dictionary_encode()
        names = encoded.dictionary.to_pylist()
        strata = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        names, strata = ["all"], np.zeros(table.num_rows, dtype=np.int64)
    kept = decisions.verdict != VERDICTS.index("fail")
    return Day(table.column("doc_id").combine_chunks(), strata, names, kept, decisions, scorers)


def strategy_scores(day: Day, cfg: AnnotationConfig, review_below: float) -> dict[str, np.ndarray]:
    """Return each strategy's informativeness per row (higher = more; NaN where it has nothing to say)."""
    d = day.decisions
    parts = [al.closeness(d.quality, review_below)]
    for scorer in day.scorers:
        if scorer.name.startswith("classifier_"):
            # margin: least confidence and entropy rank a binary classifier's documents alike
            parts.append(al.margin(d.scores[scorer.name]["probability"]))
    # the mean of the parts a row has (NaN: no information, e.g. a classifier not trained yet); NaN when none
    stack = np.vstack(parts)
    present = ~np.isnan(stack)
    with np.errstate(all="ignore"):
        uncertainty = np.where(present.any(axis=0), np.where(present, stack, 0.0).sum(axis=0) / present.sum(axis=0),
                               np.nan)
    votes = [scorer.quality(d.scores[scorer.name], d.domains) for scorer in day.scorers]
    votes = [np.asarray(v, dtype=np.float64) for v in votes if v is not None]
    if votes:
        matrix = np.vstack(votes).T
        with np.errstate(invalid="ignore"):
            committee = np.where(np.isnan(matrix), np.nan, (matrix >= 0.5).astype(np.float64))
        qbc = al.vote_entropy(committee)
    else:
        qbc = np.full(len(d.quality), np.nan)
    return {"uncertainty": uncertainty, "qbc": qbc}


@dataclass(frozen=True)
class Pick:
    row: int
    strategy: str
    score: float | None


class VectorSource:
    """The stored MiniLM vectors of chosen candidate rows (semantic dedup's), read in one pass."""

    def __init__(self, storage: Storage, dt: str, config: PipelineConfig, scores_dir: str, doc_ids: pa.Array):
        self.storage, self.dt, self.config, self.scores_dir, self.doc_ids = storage, dt, config, scores_dir, doc_ids
        self.encoded = 0

    def vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the distinct ``rows``, sorted, and their vectors (float32, one per row)."""
        rows = np.unique(rows)
        lookup = self.lookup(self.dt)
        ids = self.doc_ids.take(pa.array(rows))
        stored = lookup.stored_ids()
        missing = ~pc.is_in(ids, value_set=stored).to_numpy(zero_copy_only=False)
        # texts are read only for rows semantic dedup stored no vector for (it normally stored every survivor)
        texts = pa.nulls(len(rows), pa.string())
        if missing.any():
            taken = self.storage.take_rows(self.scores_dir, rows=rows[missing], columns=["text"]).column("text")
            texts = pc.replace_with_mask(texts, pa.array(missing), taken.combine_chunks())
        out = lookup.vectors(pa.table({"doc_id": ids, "text": texts}))
        self.encoded += lookup.encoded
        return rows, out

    def lookup(self, dt: str):
        from dctp_tasks.quality.embeddings import EmbeddingConfig, EmbeddingLookup

        return EmbeddingLookup(self.storage, dt, EmbeddingConfig.from_dedup(self.config.dedup_semantic))

    def documents(self, doc_ids: list[str], dts: list[str], texts: list[str]) -> np.ndarray:
        """Return the vectors of documents of any date: their date's stored ones, else encoded from ``texts``."""
        from dctp_tasks.quality.embeddings import EmbeddingConfig, document_vectors

        out, encoded = document_vectors(self.storage, dts, doc_ids, texts,
                                        EmbeddingConfig.from_dedup(self.config.dedup_semantic))
        self.encoded += encoded
        return out


def expert_labels(storage: Storage, config: PipelineConfig, store: FeedbackStore,
                  source: VectorSource) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the vectors and 0/1 labels (1 = good) of every document the experts judged: its merged consensus
    where a merge has decided it, else the majority of its judgements (ties and ``needs_review`` left out); ``None``
    while there are fewer than ``committee_min_labels`` or fewer than 2 of a class."""
    from dctp_tasks.feedback.consensus_db import current_consensus, item_facts

    cfg = config.annotation
    current = current_consensus(store)
    merged = dict(zip(item_facts(store, current.item_id).doc_id.tolist(), current.label.tolist(), strict=True))
    judged = []
    for d in store.judged_documents():
        majority = "good" if d["good"] > d["bad"] else "bad" if d["bad"] > d["good"] else None
        label = merged.get(d["doc_id"]) or majority
        if label in ("good", "bad"):
            judged.append({**d, "label": label})
    y = np.array([int(d["label"] == "good") for d in judged], dtype=np.int64)
    if len(judged) < cfg.committee_min_labels or np.bincount(y, minlength=2).min() < 2:
        return None
    vectors = source.documents([d["doc_id"] for d in judged], [d["dt"] for d in judged],
                               [d["text"] for d in judged])
    return vectors, y


def choose(day: Day, available: np.ndarray, cfg: AnnotationConfig, review_below: float, dt: str,
           vectors: VectorSource, labeled: tuple[np.ndarray, np.ndarray] | None = None,
           stats: dict | None = None) -> list[Pick]:
    """Pick the batch: the audit share at random from filtered rows, the rest by strategy within each stratum.

    With ``labeled`` (expert-judged vectors and labels), ``qbc`` also asks a bootstrap committee of logistic
    regressions trained on them: among each stratum's uncertainty and vote-entropy candidates, a row's qbc score is
    the mean of its vote entropy and its committee disagreement (KL to the mean), each scaled to [0, 1].
    """
    rng = np.random.default_rng([cfg.seed, int(dt.replace("-", ""))])
    kept_pool, filtered_pool = available & day.kept, available & ~day.kept
    budget = min(cfg.budget, int(available.sum()))
    audit_n = min(round(budget * cfg.audit_share), int(filtered_pool.sum()))
    kept_n = min(budget - audit_n, int(kept_pool.sum()))
    audit_n = min(budget - kept_n, int(filtered_pool.sum()))  # what the kept rows cannot fill, the audit may
    n_strata = len(day.names)
    kept_alloc = al.allocate(np.bincount(day.strata[kept_pool], minlength=n_strata), kept_n,
                             cfg.stratification, cfg.min_per_stratum)
    audit_alloc = al.allocate(np.bincount(day.strata[filtered_pool], minlength=n_strata), audit_n,
                              cfg.stratification, cfg.min_per_stratum)
    scores = strategy_scores(day, cfg, review_below)
    shares = {name: share for name, share in cfg.strategies.items() if share > 0}
    plan: list[tuple[int, dict[str, int]]] = [(s, _split(int(kept_alloc[s]), shares)) for s in range(n_strata)
                                              if kept_alloc[s]]
    # one read of the vectors every diversity pick may need: each strategy's top candidates per stratum
    candidates: dict[tuple[int, str], np.ndarray] = {}
    for stratum, counts in plan:
        rows = np.flatnonzero(kept_pool & (day.strata == stratum))
        for name in ("uncertainty", "qbc"):
            if counts.get(name):
                wanted = counts[name] * (cfg.diversity_pool if cfg.diversity else 1) + int(kept_alloc[stratum])
                candidates[(stratum, name)] = rows[al.top_k(scores[name][rows], wanted)]
    need_vectors = candidates and (cfg.diversity or (labeled is not None and "qbc" in shares))
    vector_rows, matrix = (vectors.vectors(np.concatenate(list(candidates.values())))
                           if need_vectors else (np.zeros(0, np.int64), None))

    def vec(rows: np.ndarray) -> np.ndarray:
        return matrix[np.searchsorted(vector_rows, rows)]

    if labeled is not None and need_vectors:
        scores["qbc"] = scores["qbc"].copy()
        committee = al.bootstrap_committee(labeled[0], labeled[1], matrix, members=cfg.committee_size,
                                           seed=cfg.seed)
        if stats is not None:
            stats["committee_members"] = len(committee)
        disagreement = al.kl_to_mean(committee)
        top = np.nanmax(disagreement) if len(disagreement) and np.isfinite(disagreement).any() else 0.0
        scaled = disagreement / top if top > 0 else np.zeros_like(disagreement)
        with np.errstate(invalid="ignore"):
            scores["qbc"][vector_rows] = np.nanmean(np.vstack([scores["qbc"][vector_rows] / np.log(2), scaled]),
                                                    axis=0)
        for (stratum, name), pool in list(candidates.items()):
            if name == "qbc":
                union = np.union1d(pool, candidates.get((stratum, "uncertainty"), pool))
                candidates[(stratum, name)] = union[al.top_k(scores["qbc"][union], len(pool))]

    picks: list[Pick] = []
    taken = np.zeros(len(day.kept), dtype=bool)
    for stratum, counts in plan:
        rows = np.flatnonzero(kept_pool & (day.strata == stratum))
        short = 0
        for name in ("uncertainty", "qbc"):
            n = counts.get(name, 0)
            if not n:
                continue
            pool = candidates[(stratum, name)]
            pool = pool[~taken[pool]]
            if cfg.diversity and len(pool) > n:
                chosen_so_far = np.flatnonzero(taken)
                centers = vec(chosen_so_far[day.strata[chosen_so_far] == stratum]) if taken.any() else None
                chosen = pool[al.k_center_greedy(vec(pool), n, centers=centers if centers is not None
                                                 and len(centers) else None)]
            else:
                chosen = pool[:n]
            short += n - len(chosen)
            taken[chosen] = True
            picks += [Pick(int(r), name, float(scores[name][r])) for r in chosen]
        # the random share, plus what a strategy could not fill (rows it had no score for)
        n = counts.get("random", 0) + short
        rest = rows[~taken[rows]]
        chosen = rest[al.random_pick(len(rest), min(n, len(rest)), rng)]
        taken[chosen] = True
        picks += [Pick(int(r), "random", None) for r in chosen]
    for stratum in np.flatnonzero(audit_alloc):
        rows = np.flatnonzero(filtered_pool & (day.strata == stratum))
        chosen = rows[al.random_pick(len(rows), int(audit_alloc[stratum]), rng)]
        picks += [Pick(int(r), AUDIT, None) for r in chosen]
    return picks


def snapshot(storage: Storage, config: PipelineConfig, dt: str, day: Day, picks: list[Pick], kept_dir: str,
             scores_dir: str, rejects: pa.Table, *, dedup_dag_id: str | None = None) -> list[NewItem]:
    """Return the picked rows as queue items: kept rows as they will be exported (from ``kept_dir``), filtered rows
    from the scores with PII redacted the same way, with their scores, the rule that removed them, and (with
    ``dedup_dag_id``, the DAG whose dedup stages ran on the day) their nearest removed duplicates."""
    d = day.decisions
    kept_rank = np.cumsum(day.kept) - 1
    rows = np.array([p.row for p in picks], dtype=np.int64)
    is_kept = day.kept[rows] if len(rows) else np.zeros(0, dtype=bool)
    texts: dict[int, dict] = {}
    for folder, wanted, to_file in ((kept_dir, rows[is_kept], lambda r: kept_rank[r]),
                                    (scores_dir, rows[~is_kept], lambda r: r)):
        if not len(wanted):
            continue
        order = np.sort(wanted)
        table = storage.take_rows(folder, rows=np.asarray(to_file(order), dtype=np.int64), columns=_SNAPSHOT_COLUMNS)
        if folder == scores_dir:
            redact = redactor(config.quality)
            table = redact(table) if redact is not None else table
        texts.update(zip(order.tolist(), table.to_pylist(), strict=True))
    reasons = {r["doc_id"]: r for r in rejects.select(["doc_id", "reason", "detail"]).to_pylist()}
    duplicates = {} if dedup_dag_id is None else nearest_duplicates(
        storage, config, dedup_dag_id, dt, [texts[p.row]["doc_id"] for p in picks])
    out = []
    for pick in picks:
        row = texts[pick.row]
        reject = reasons.get(row["doc_id"], {})
        verdict = int(d.verdict[pick.row])
        out.append(NewItem(
            doc_id=row["doc_id"], dt=dt, text=row["text"] or "", prompt=row["prompt"], response=row["response"],
            source=row["source"], domain=row["domain"], lang=row["lang"], pool="kept" if day.kept[pick.row]
            else "filtered", strategy=pick.strategy, strategy_score=pick.score,
            stratum=day.names[day.strata[pick.row]], quality=float(d.quality[pick.row]),
            verdict=VERDICTS[verdict] if verdict < len(VERDICTS) else None,
            filter_reason=reject.get("reason"), filter_detail=reject.get("detail"), synthetic=bool(row["synthetic"]),
            duplicates=duplicates.get(row["doc_id"], []),
            scores={scorer: {name: _plain(values[pick.row]) for name, values in fields.items()}
                    for scorer, fields in d.scores.items()}))
    return out


def nearest_duplicates(storage: Storage, config: PipelineConfig, dag_id: str, dt: str,
                       doc_ids: list[str]) -> dict[str, list[dict]]:
    """Return, per document of ``doc_ids`` that has any, up to ``MAX_DUPLICATES`` rows the day's dedup stages removed
    as its duplicates, closest first (exact copies, then near and semantic ones by the similarity their detail gives):
    ``{doc_id, reason, detail, text}``, ``text`` the start of the duplicate as normalize left it, PII redacted as the
    queued texts are (``None`` when normalize's rows are not there). A stage that did not run adds nothing.

    A day holds millions of rows: only the rejects naming ``doc_ids`` are kept, and only their texts are read.
    """
    wanted = pa.array(sorted(set(doc_ids)), pa.string())
    if not len(wanted):
        return {}
    # the best few per document, kept while streaming: a boilerplate text can have a million removed copies
    nearest: dict[str, list[dict]] = {}
    for stage in DEDUP_STAGES:
        try:
            folder = posixpath.join(stage_version(storage, dag_id, dt, stage), REJECTS)
        except NotPublished:
            continue
        columns = ["doc_id", "stage", "reason", "detail", "duplicate_of"]
        for batch in storage.iter_batches(folder, batch_size=config.batch_size, columns=columns):
            for row in batch.filter(_among(batch.column("duplicate_of"), wanted)).to_pylist():
                group = nearest.setdefault(row["duplicate_of"], [])
                if all(d["doc_id"] != row["doc_id"] for d in group):
                    group.append(row)
                    group.sort(key=_closeness)
                    del group[MAX_DUPLICATES:]
    texts = _texts(storage, config, dag_id, dt, {d["doc_id"] for group in nearest.values() for d in group})
    return {doc_id: [{"doc_id": d["doc_id"], "reason": d["reason"], "detail": d["detail"],
                      "text": texts.get(d["doc_id"])} for d in group] for doc_id, group in nearest.items()}


def _closeness(row: dict) -> tuple:
    """Sort key of a removed duplicate: exact copies first, then near (MinHash Jaccard) and semantic (cosine)
    duplicates, each most similar first (the two scales are not comparable), then by id."""
    rank = DEDUP_STAGES.index(row["stage"]) if row["stage"] in DEDUP_STAGES else len(DEDUP_STAGES)
    match = _SIMILARITY.search(row["detail"] or "")
    return rank, -float(match.group(1)) if match else math.inf, row["doc_id"]


def _texts(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, doc_ids: set[str]) -> dict[str, str]:
    """Return the first ``DUPLICATE_TEXT_CHARS`` characters of each of ``doc_ids``' text in normalize's rows of
    ``dt``, PII redacted: the ids are found in one pass over the id column, then only their row groups are read."""
    try:
        folder = stage_rows(storage, dag_id, dt, TEXT_STAGE)
    except NotPublished:
        return {}
    if not doc_ids:
        return {}
    wanted = pa.array(sorted(doc_ids), pa.string())
    rows, first = [], 0
    for batch in storage.iter_batches(folder, batch_size=config.batch_size, columns=["doc_id"]):
        rows.append(np.flatnonzero(_among(batch.column("doc_id"), wanted).to_numpy(zero_copy_only=False)) + first)
        first += batch.num_rows
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    if not len(rows):
        return {}
    table = storage.take_rows(folder, rows=rows.astype(np.int64), columns=["doc_id", "text"])
    redact = redactor(config.quality)
    table = redact(table) if redact is not None else table
    out: dict[str, str] = {}
    for doc_id, text in zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist(), strict=True):
        if doc_id not in out and text is not None:  # an id delivered twice in a day: its first row
            out[doc_id] = text[:DUPLICATE_TEXT_CHARS]
    return out


def _among(values: pa.Array, wanted: pa.Array) -> pa.Array:
    return pc.fill_null(pc.is_in(values, value_set=wanted), False)


def assign(new_items: list[NewItem], cfg: AnnotationConfig, load: dict[str, int]) -> None:
    """Give each item ``experts_per_item`` experts who may judge its domain, the least loaded first (then by name),
    counting their open assignments from earlier batches."""
    load = {name: load.get(name, 0) for name in cfg.experts}
    eligible = [[name for name, expert in cfg.experts.items() if expert.judges(item.domain)] for item in new_items]
    # the items fewest experts may judge go first, so the experts who may judge anything take up the rest
    for index in sorted(range(len(new_items)), key=lambda i: len(eligible[i])):
        item = new_items[index]
        item.experts = sorted(sorted(eligible[index], key=lambda name: (load[name], name))[:cfg.experts_per_item])
        for name in item.experts:
            load[name] += 1


def strategy_mix(cfg: AnnotationConfig) -> dict:
    """Return what the batch records of how it was chosen."""
    total = sum(cfg.strategies.values())
    return {"strategies": {k: round(v / total, 6) for k, v in sorted(cfg.strategies.items())},
            "audit_share": cfg.audit_share, "diversity": cfg.diversity, "diversity_pool": cfg.diversity_pool,
            "stratify_by": cfg.stratify_by,
            "stratification": cfg.stratification, "min_per_stratum": cfg.min_per_stratum,
            "experts_per_item": cfg.experts_per_item, "seed": cfg.seed}


def pick_metrics(new_items: list[NewItem], day: Day) -> dict[str, int]:
    """Counts for MLflow: per strategy, per stratum (the largest), assigned and unassigned items."""
    out: dict[str, int] = {f"picked_{k}": v for k, v in sorted(Counter(i.strategy for i in new_items).items())}
    out["audit"] = out.get(f"picked_{AUDIT}", 0)
    out["unassigned"] = sum(1 for i in new_items if not i.experts)
    out["assignments"] = sum(len(i.experts) for i in new_items)
    for stratum, n in Counter(i.stratum for i in new_items).most_common(_MAX_STRATUM_METRICS):
        out[f"stratum.{re.sub(r'[^A-Za-z0-9_.-]+', '_', stratum)}"] = n
    return out


def render_report(dt: str, cfg: AnnotationConfig, day: Day, available: np.ndarray, new_items: list[NewItem]) -> str:
    """Return the Markdown report of the batch: budget, per strategy, per stratum, per expert."""
    by_strategy = Counter(i.strategy for i in new_items)
    lines = [f"# Selection for annotation, dt={dt}", "",
             f"Budget {cfg.budget}; chosen **{len(new_items)}** of {len(day.kept):,} decided rows "
             f"({int(day.kept.sum()):,} kept, {int((~day.kept).sum()):,} filtered; "
             f"{int((~available).sum()):,} already queued earlier).", "",
             "| strategy | chosen |", "|---|---:|"]
    lines += [f"| {name} | {by_strategy[name]} |" for name in (*cfg.strategies, AUDIT) if by_strategy[name]]
    lines += ["", "| stratum | kept rows | filtered rows | chosen | " + " | ".join((*cfg.strategies, AUDIT)) + " |",
              "|---|---:|---:|---:|" + "---:|" * (len(cfg.strategies) + 1)]
    kept_sizes = np.bincount(day.strata[day.kept], minlength=len(day.names))
    filtered_sizes = np.bincount(day.strata[~day.kept], minlength=len(day.names))
    per = Counter((i.stratum, i.strategy) for i in new_items)
    for s, name in enumerate(day.names):
        chosen = sum(per[(name, k)] for k in (*cfg.strategies, AUDIT))
        lines.append(f"| {table_cell(name)} | {kept_sizes[s]:,} | {filtered_sizes[s]:,} | {chosen} | "
                     + " | ".join(str(per[(name, k)]) for k in (*cfg.strategies, AUDIT)) + " |")
    load = Counter(e for i in new_items for e in i.experts)
    lines += ["", "| expert | assigned today |", "|---|---:|"]
    lines += [f"| {table_cell(name)} | {load[name]} |" for name in sorted(cfg.experts)]
    unassigned = sum(1 for i in new_items if not i.experts)
    if unassigned:
        lines += ["", f"**{unassigned} chosen documents have no expert**: no one on the roster "
                      "(annotation.experts) may judge their domain."]
    return "\n".join(lines) + "\n"


def _split(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``n`` across strategies by share, largest remainder (ties in the config's order)."""
    total = sum(shares.values())
    exact = {k: n * v / total for k, v in shares.items()}
    out = {k: int(np.floor(v)) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: -(exact[k] - out[k]))[: n - sum(out.values())]:
        out[k] += 1
    return out


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value

