"""The feedback store's merging side: every effective judgement as arrays, merge runs with the consensus they
changed, expert reliability and sampling weights, and one more assignment for documents that need review.

Consensus is history: a merge run writes a row for a document only when its consensus changed, so the current
consensus of a document is its row of the highest ``merge_id`` and every earlier one stays readable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa

from dctp_tasks.feedback.db import (
    annotations,
    assignments,
    consensus,
    expert_reliability,
    items,
    merge_runs,
    sampling_weights,
)
from dctp_tasks.feedback.store import FeedbackStore, _chunks, _finite, _json_safe, _lock, _utc

LABEL_NAMES = {1: "good", 0: "bad", -1: "needs_review"}
"""Consensus codes (``dctp_tasks.feedback.consensus``) -> the stored label."""


@dataclass(frozen=True)
class EffectiveLabels:
    """Each expert's effective good/bad judgement per queue item (skips and retracted judgements left out)."""

    item_id: np.ndarray  # int64
    expert: np.ndarray  # object: names
    label: np.ndarray  # int8: 1 good, 0 bad
    annotation_id: np.ndarray  # int64
    skips: int
    done_item: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """With ``done_expert``: every (item, expert) with an effective judgement, skips included (their work done)."""
    done_expert: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))


def effective_labels(store: FeedbackStore) -> EffectiveLabels:
    """Return every expert's effective judgement of every item, read in one pass and resolved with NumPy: their
    latest row that no retraction names (a later skip replaces an earlier label and is then left out)."""
    query = sa.select(annotations.c.annotation_id, annotations.c.item_id, annotations.c.expert, annotations.c.label,
                      annotations.c.retracts).order_by(annotations.c.annotation_id)
    with store._reading() as conn:
        rows = conn.execute(query).all()
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return EffectiveLabels(empty, np.zeros(0, dtype=object), np.zeros(0, dtype=np.int8), empty, 0)
    ids, item_ids, experts, labels, retracts = (np.asarray(c, dtype=object) for c in zip(*rows, strict=True))
    ids = ids.astype(np.int64)
    named = retracts[retracts != None].astype(np.int64)  # noqa: E711 - elementwise
    judgement = (labels != None) & ~np.isin(ids, named)  # noqa: E711
    ids, item_ids, experts, labels = ids[judgement], item_ids[judgement].astype(np.int64), experts[judgement], \
        labels[judgement]
    names, expert_code = np.unique(experts.astype(str), return_inverse=True)
    key = item_ids * len(names) + expert_code
    # rows are in id order: the last row of each (item, expert) is their effective one
    _, last_reversed = np.unique(key[::-1], return_index=True)
    latest = len(key) - 1 - last_reversed
    latest.sort()
    labels = labels[latest]
    decided = labels != "skip"
    done_expert = names[expert_code[latest]].astype(object)
    return EffectiveLabels(item_ids[latest][decided], done_expert[decided],
                           (labels[decided] == "good").astype(np.int8), ids[latest][decided],
                           int((~decided).sum()), item_ids[latest], done_expert)


def latest_annotation_id(store: FeedbackStore) -> int | None:
    """Return the id of the newest row of the audit trail (``None`` while it is empty)."""
    with store._reading() as conn:
        return conn.execute(sa.select(sa.func.max(annotations.c.annotation_id))).scalar()


@dataclass(frozen=True)
class ItemFacts:
    """What merging needs about queue items, as arrays aligned with ``item_id``."""

    item_id: np.ndarray
    doc_id: np.ndarray
    dt: np.ndarray
    source: np.ndarray
    domain: np.ndarray
    batch_id: np.ndarray
    synthetic: np.ndarray


def item_facts(store: FeedbackStore, item_ids: np.ndarray) -> ItemFacts:
    """Return doc_id, dt, source, domain, batch and ``synthetic`` of ``item_ids`` (in that order)."""
    columns = (items.c.item_id, items.c.doc_id, items.c.dt, items.c.source, items.c.domain, items.c.batch_id,
               items.c.synthetic)
    found: dict[int, tuple] = {}
    with store._reading() as conn:
        for chunk in _chunks({int(i) for i in item_ids}):
            found.update((r[0], r) for r in conn.execute(sa.select(*columns).where(items.c.item_id.in_(chunk))))
    rows = [found[int(i)] for i in item_ids]
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
    return ItemFacts(np.asarray(cols[0], dtype=np.int64), *(np.asarray(c, dtype=object) for c in cols[1:6]),
                     np.asarray(cols[6], dtype=bool))


def item_texts(store: FeedbackStore, item_ids: Sequence[int]) -> dict[int, str]:
    """Return the snapshot text of each queue item."""
    out: dict[int, str] = {}
    with store._reading() as conn:
        for chunk in _chunks({int(i) for i in item_ids}):
            out.update(conn.execute(sa.select(items.c.item_id, items.c.text).where(items.c.item_id.in_(chunk))).all())
    return out


@dataclass(frozen=True)
class CurrentConsensus:
    """The consensus in force per queue item (arrays), and the merge run that set it."""

    item_id: np.ndarray
    label: np.ndarray  # object: good, bad, needs_review
    p_good: np.ndarray
    confidence: np.ndarray
    judgements: np.ndarray
    merge_id: np.ndarray
    annotation_ids: np.ndarray  # object: JSON lists


def current_consensus(store: FeedbackStore) -> CurrentConsensus:
    """Return each item's latest consensus row."""
    query = sa.select(consensus.c.item_id, consensus.c.label, consensus.c.p_good, consensus.c.confidence,
                      consensus.c.judgements, consensus.c.merge_id, consensus.c.annotation_ids
                      ).order_by(consensus.c.item_id, consensus.c.merge_id)
    with store._reading() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return CurrentConsensus(*(np.zeros(0, dtype=t) for t in (np.int64, object, float, float, np.int64, np.int64,
                                                                   object)))
    cols = [np.asarray(c, dtype=object) for c in zip(*rows, strict=True)]
    item_ids = cols[0].astype(np.int64)
    last = np.r_[item_ids[1:] != item_ids[:-1], True]  # rows sorted by item, merge: each item's last row
    return CurrentConsensus(item_ids[last], cols[1][last], np.asarray(cols[2][last], dtype=float),
                            np.asarray(cols[3][last], dtype=float), cols[4][last].astype(np.int64),
                            cols[5][last].astype(np.int64), cols[6][last])


@dataclass
class MergeRecord:
    """What one merge run stores (``record_merge``)."""

    dag_id: str
    run_id: str | None
    dt: str | None
    method: str
    judgements: int
    documents: int
    stats: dict
    config_hash: str
    consensus_rows: list[dict]
    """``item_id, label, p_good, confidence, judgements, method, annotation_ids`` of every judged item."""
    experts: list[dict]
    """``expert, judgements, reliability, agreement, flagged, weight``."""
    weights: list[dict]
    """``kind, key, good, bad, share, weight``."""


def record_merge(store: FeedbackStore, record: MergeRecord) -> tuple[int, int]:
    """Store a merge run: the consensus rows that differ from the current ones, reliability and weights; return
    the merge id and how many documents' consensus changed."""
    with store.engine.begin() as conn:
        _lock(conn, "dctp_merge")  # two merges at once would each think the other's changes are still to write
        latest = conn.execute(sa.select(merge_runs.c.merge_id, merge_runs.c.stats)
                              .order_by(merge_runs.c.merge_id.desc()).limit(1)).first()
        seen = json.loads(latest[1]).get("last_annotation_id") if latest else None
        mine = record.stats.get("last_annotation_id")
        if seen is not None and (mine is None or mine < seen):
            # another merge recorded newer judgements while this one computed: its consensus stays current
            return latest[0], 0
        previous = {r[0]: r[1:] for r in conn.execute(_current_query())}
        changed = [r for r in record.consensus_rows
                   if previous.get(r["item_id"]) != (r["label"], r["annotation_ids"])]
        # a document whose judgements were all taken back (undo, or a skip) has no consensus any more
        judged = {r["item_id"] for r in record.consensus_rows}
        changed += [{"item_id": item_id, "label": "needs_review", "p_good": None, "confidence": None,
                     "judgements": 0, "method": record.method, "annotation_ids": "[]"}
                    for item_id, (label, ids) in previous.items()
                    if item_id not in judged and (label, ids) != ("needs_review", "[]")]
        merge_id = conn.execute(merge_runs.insert().returning(merge_runs.c.merge_id), {
            "dag_id": record.dag_id, "run_id": record.run_id, "dt": record.dt, "created_at": datetime.now(UTC),
            "method": record.method, "judgements": record.judgements, "documents": record.documents,
            "stats": json.dumps(_json_safe(record.stats), sort_keys=True),
            "config_hash": record.config_hash, "table_version": None}).scalar_one()
        for rows, table in ((changed, consensus), (record.experts, expert_reliability),
                            (record.weights, sampling_weights)):
            if rows:
                conn.execute(table.insert(), [{**_json_safe(r), "merge_id": merge_id} for r in rows])
    return merge_id, len(changed)


def _current_query() -> sa.Select:
    latest = (sa.select(consensus.c.item_id, sa.func.max(consensus.c.merge_id).label("merge_id"))
              .group_by(consensus.c.item_id).subquery())
    return sa.select(consensus.c.item_id, consensus.c.label, consensus.c.annotation_ids).join(
        latest, sa.and_(latest.c.item_id == consensus.c.item_id, latest.c.merge_id == consensus.c.merge_id))


def stamp_merge(store: FeedbackStore, merge_id: int, table_version: int) -> None:
    """Record the Delta table version a merge run's changes landed in."""
    with store.engine.begin() as conn:
        conn.execute(merge_runs.update().where(merge_runs.c.merge_id == merge_id).values(
            table_version=int(table_version)))


def merge_run(store: FeedbackStore, merge_id: int | None = None) -> dict | None:
    """Return merge run ``merge_id`` (default the latest) with its experts and weights, or ``None``."""
    with store._reading() as conn:
        query = sa.select(merge_runs)
        query = query.where(merge_runs.c.merge_id == merge_id) if merge_id is not None \
            else query.order_by(merge_runs.c.merge_id.desc()).limit(1)
        run = conn.execute(query).mappings().first()
        if run is None:
            return None
        experts = conn.execute(sa.select(expert_reliability).where(
            expert_reliability.c.merge_id == run["merge_id"]).order_by(expert_reliability.c.expert)).mappings().all()
        weights = conn.execute(sa.select(sampling_weights).where(
            sampling_weights.c.merge_id == run["merge_id"]).order_by(sampling_weights.c.kind,
                                                                      sampling_weights.c.key)).mappings().all()
    return {**run, "created_at": _utc(run["created_at"]), "stats": json.loads(run["stats"]),
            "experts": [dict(e) for e in experts], "weights": [dict(w) for w in weights]}


def consensus_history(store: FeedbackStore, item_id: int) -> list[dict]:
    """Return every consensus a queue item has had, oldest first, with the run and table version that set it."""
    with store._reading() as conn:
        rows = conn.execute(sa.select(consensus, merge_runs.c.created_at, merge_runs.c.run_id,
                                      merge_runs.c.table_version).join(
            merge_runs, merge_runs.c.merge_id == consensus.c.merge_id).where(consensus.c.item_id == item_id)
            .order_by(consensus.c.merge_id)).mappings().all()
    return [{**r, "created_at": _utc(r["created_at"]), "annotation_ids": json.loads(r["annotation_ids"])}
            for r in rows]


def assign_reviews(store: FeedbackStore, item_ids: Sequence[int], max_judgements: int,
                   labels: EffectiveLabels | None = None, now: datetime | None = None) -> dict[int, str]:
    """Assign each ``needs_review`` item to one more expert: one who is not assigned yet, may judge its domain,
    senior first, then the least loaded; only when every expert assigned has judged it and it has fewer than
    ``max_judgements`` judgements. ``labels``: the effective judgements, when the caller has read them already.
    Return ``{item_id: expert}`` of the assignments made."""
    if not item_ids:
        return {}
    roster = store.roster
    rank = {"senior": 0, "regular": 1, "junior": 2}
    now = now or datetime.now(UTC)
    made: dict[int, str] = {}
    with store.engine.begin() as conn:
        _lock(conn, "dctp_reviews")
        labels = labels if labels is not None else effective_labels(store)
        pairs = conn.execute(sa.select(assignments.c.item_id, assignments.c.expert)).all()
        load = _open_load(pairs, labels)
        wanted = {int(i) for i in item_ids}
        assigned: dict[int, set[str]] = {}
        for item_id, expert in pairs:
            if item_id in wanted:
                assigned.setdefault(item_id, set()).add(expert)
        domains: dict[int, str | None] = {}
        for chunk in _chunks(wanted):
            domains.update(conn.execute(sa.select(items.c.item_id, items.c.domain).where(
                items.c.item_id.in_(chunk))).all())
        judged: dict[int, set[str]] = {}
        mine = np.isin(labels.done_item, np.fromiter(wanted, dtype=np.int64, count=len(wanted)))
        for item_id, expert in zip(labels.done_item[mine].tolist(), labels.done_expert[mine].tolist(), strict=True):
            judged.setdefault(item_id, set()).add(expert)
        rows = []
        for item_id in sorted(wanted):
            have, done = assigned.get(item_id, set()), judged.get(item_id, set())
            if have - done or len(done) >= max_judgements:  # someone is still on it, or it has had its chances
                continue
            free = [e for e, cfg in roster.items() if e not in have | done and cfg.judges(domains.get(item_id))]
            if not free:
                continue
            expert = min(free, key=lambda e: (rank[roster[e].seniority], load.get(e, 0), e))
            load[expert] = load.get(expert, 0) + 1
            made[item_id] = expert
            rows.append({"item_id": item_id, "expert": expert, "assigned_at": now,
                         "due_at": now + timedelta(days=store.config.due_days)})
        if rows:
            # ``judged`` is left to the database's triggers, which set it for every writer of assignments
            conn.execute(assignments.insert(), rows)
    return made


def _open_load(pairs: Sequence[tuple[int, str]], labels: EffectiveLabels) -> dict[str, int]:
    """Return each expert's open assignments: the (item, expert) pairs with no effective judgement, vectorised."""
    if not pairs:
        return {}
    item_ids, experts = (np.asarray(c, dtype=object) for c in zip(*pairs, strict=True))
    names, codes = np.unique(np.concatenate([experts, labels.done_expert]).astype(str), return_inverse=True)
    assigned_key = item_ids.astype(np.int64) * len(names) + codes[:len(experts)]
    done_key = labels.done_item.astype(np.int64) * len(names) + codes[len(experts):]
    open_ = ~np.isin(assigned_key, done_key)
    counts = np.bincount(codes[:len(experts)][open_], minlength=len(names))
    return {str(name): int(counts[i]) for i, name in enumerate(names) if counts[i]}

def rejected_documents(store: FeedbackStore) -> dict[str, tuple[str, list[int]]]:
    """Return ``doc_id -> (dt, judgement ids)`` of every exported document (audit rows never were) whose current
    consensus is ``bad``."""
    current = current_consensus(store)
    bad = current.label == "bad"
    facts = item_facts(store, current.item_id[bad])
    with store._reading() as conn:
        kept = {i for chunk in _chunks({int(i) for i in facts.item_id}) for i in conn.execute(
            sa.select(items.c.item_id).where(items.c.item_id.in_(chunk), items.c.pool == "kept")).scalars()}
    return {doc_id: (dt, json.loads(ids)) for item_id, doc_id, dt, ids in
            zip(facts.item_id.tolist(), facts.doc_id.tolist(), facts.dt.tolist(), current.annotation_ids[bad].tolist(),
                strict=True) if item_id in kept}


def batch_agreement(store: FeedbackStore, dts: Sequence[str]) -> tuple[dict[str, tuple[int, float | None]],
                                                                      dict[str, dict]]:
    """Return each date's latest merge run (id, Krippendorff's alpha of that date's batch) and, from the latest merge
    run of all, each expert's ``reliability`` and ``agreement``: the numbers merging computed, where one has run."""
    if not dts:
        return {}, {}
    with store._reading() as conn:
        runs = conn.execute(sa.select(merge_runs.c.merge_id, merge_runs.c.dt, merge_runs.c.stats)
                            .where(merge_runs.c.dt.in_(list(dts))).order_by(merge_runs.c.merge_id)).all()
        latest = conn.execute(sa.select(sa.func.max(merge_runs.c.merge_id))).scalar()
        experts = conn.execute(sa.select(expert_reliability.c.expert, expert_reliability.c.reliability,
                                         expert_reliability.c.agreement)
                               .where(expert_reliability.c.merge_id == latest)).all() if latest else []
    alpha = {dt: (merge_id, _finite(json.loads(stats).get("alpha_batch"))) for merge_id, dt, stats in runs}
    return alpha, {e: {"reliability": _finite(r), "agreement": _finite(a)} for e, r, a in experts}
