"""The feedback store's API, used by the CLI, the stages and the annotation app: queue, judge, history, counts.

Every call validates its input and refuses an unknown expert, item, label or category with ``FeedbackError`` (a
``ValueError``) before it writes anything. ``annotations`` is the audit trail and only ever grows: a correction is a
new judgement, an undo a retraction row naming the judgement it takes back. An expert's *effective* judgement of an
item is their latest judgement that no retraction names; whether they have one is ``assignments.judged``, kept by
the database's triggers, so the expert's calls (next item, submit, undo, progress) are indexed lookups.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dctp_tasks.config import EXPERT_NAME_PATTERN, AnnotationConfig, ExpertConfig
from dctp_tasks.feedback import db
from dctp_tasks.feedback.db import annotations, assignments, batches, items

LABELS = ("good", "bad", "skip")
CLIENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,63}$"
MAX_RATIONALE = 10_000
"""Characters a rationale may hold."""


# What ``open_queue(brief=True)`` reads instead of the columns that can be large.
_BRIEF = {"text": sa.literal(""), "prompt": sa.null(), "response": sa.null(), "duplicates": sa.null()}


class FeedbackError(ValueError):
    """Input the store refuses (unknown expert, item, label, category …); nothing was written."""


class NotInQueue(FeedbackError):
    """The queue item or document named is not in the annotation queue."""


class NotAllowed(FeedbackError):
    """The expert may not judge the item (its domain is not theirs)."""


class RequestIdReused(FeedbackError):
    """The request id was already used by the expert for a different judgement."""


@dataclass(frozen=True)
class QueueItem:
    """A queued document as the expert sees it, and why it was picked."""

    item_id: int
    batch_id: int
    doc_id: str
    dt: str
    source: str | None
    domain: str | None
    lang: str | None
    text: str
    prompt: str | None
    response: str | None
    scores: dict
    quality: float | None
    verdict: str | None
    filter_reason: str | None
    filter_detail: str | None
    pool: str
    strategy: str
    strategy_score: float | None
    stratum: str
    position: int
    staged_version: str | None
    table_version: int | None
    synthetic: bool = False
    due_at: datetime | None = None
    duplicates: list = field(default_factory=list)
    """The rows the day's dedup removed as duplicates of this document, most similar first: ``{doc_id, reason,
    detail, text}`` (``select.nearest_duplicates``)."""


@dataclass(frozen=True)
class Judgement:
    """One row of the audit trail: a judgement (``label``), or the retraction of judgement ``retracts``."""

    annotation_id: int
    item_id: int
    doc_id: str
    expert: str
    label: str | None
    category: str | None
    rationale: str | None
    retracts: int | None
    created_at: datetime
    client: str
    request_id: str | None = None


@dataclass(frozen=True)
class DocHistory:
    item: QueueItem
    assigned: list[str]
    trail: list[Judgement]
    """Every row about the document, oldest first, retractions included."""
    effective: dict[str, Judgement]
    """Each expert's effective judgement."""


@dataclass
class NewItem:
    """A document chosen for judgement: the snapshot the expert will see and the reason it was picked."""

    doc_id: str
    dt: str
    text: str
    pool: str
    strategy: str
    stratum: str
    source: str | None = None
    domain: str | None = None
    lang: str | None = None
    prompt: str | None = None
    response: str | None = None
    scores: dict = field(default_factory=dict)
    quality: float | None = None
    verdict: str | None = None
    filter_reason: str | None = None
    filter_detail: str | None = None
    strategy_score: float | None = None
    synthetic: bool = False
    duplicates: list = field(default_factory=list)
    experts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BatchInfo:
    batch_id: int
    dt: str
    dag_id: str
    run_id: str | None
    created_at: datetime
    budget: int
    strategy_mix: dict
    config_hash: str
    mlflow_run_id: str | None
    staged_version: str | None
    table_version: int | None
    items: int
    judged: int = 0
    """Judgements (not retractions) made on the batch's items."""


class FeedbackStore:
    """The store over an engine whose schema is current, with the roster and categories of ``config``."""

    def __init__(self, engine: Engine, config: AnnotationConfig | None = None, *, check: bool = True) -> None:
        if check:
            db.check_current(engine)
        self.engine = engine
        self.config = config or AnnotationConfig()

    @classmethod
    def open(cls, url: str | URL | None = None, config: AnnotationConfig | None = None, *,
             upgrade: bool = False) -> FeedbackStore:
        """Open the store at ``url`` (default ``db.feedback_url()``); with ``upgrade``, apply missing migrations."""
        engine = db.create_feedback_engine(url or db.feedback_url())
        if upgrade:
            db.upgrade(engine)
        return cls(engine, config)

    @property
    def roster(self) -> dict[str, ExpertConfig]:
        return self.config.experts

    # -- validation --------------------------------------------------------------------------------------------

    def expert(self, name: str) -> ExpertConfig:
        """Return the roster entry of ``name``; refuse a name not on the roster."""
        if not isinstance(name, str) or not re.match(EXPERT_NAME_PATTERN, name):
            raise FeedbackError(f"expert name {name!r} is not valid ({EXPERT_NAME_PATTERN})")
        if name not in self.roster:
            known = ", ".join(sorted(self.roster)) or "none: the roster (annotation.experts) is empty"
            raise FeedbackError(f"unknown expert {name!r}: not on the roster annotation.experts (experts: {known})")
        return self.roster[name]

    def _check_judgement(self, label: str, category: str | None, rationale: str | None, client: str,
                         request_id: str | None) -> None:
        if label not in LABELS:
            raise FeedbackError(f"unknown label {label!r}: a judgement is one of {', '.join(LABELS)}")
        if category is not None and category not in self.config.categories:
            raise FeedbackError(f"unknown category {category!r}: the configured categories are "
                                f"{', '.join(self.config.categories) or 'none'} (annotation.categories)")
        if rationale is not None and (not isinstance(rationale, str) or len(rationale) > MAX_RATIONALE):
            raise FeedbackError(f"a rationale is text of at most {MAX_RATIONALE} characters")
        _check_client(client, request_id)

    # -- the expert's side -------------------------------------------------------------------------------------

    def open_queue(self, expert: str, limit: int | None = 50, dt: str | None = None, offset: int = 0, *,
                   brief: bool = False) -> list[QueueItem]:
        """Return the items assigned to ``expert`` that they have not judged yet, soonest due first: ``limit`` of
        them (all with ``None``) after the first ``offset``, only of date ``dt``'s batch if given. ``brief`` leaves
        out what a listing does not show (texts come back empty, prompt, response and duplicates empty): a
        document may be megabytes long."""
        self.expert(expert)
        _check_page(limit, offset)
        columns = [_BRIEF[c.name].label(c.name) if brief and c.name in _BRIEF else c for c in items.c]
        query = (sa.select(*columns, assignments.c.due_at)
                 .join(assignments, assignments.c.item_id == items.c.item_id)
                 .where(*self._open(expert, dt))
                 # item ids grow in batch and position order (a batch's items are inserted in order, each batch
                 # after the last), so this is the batch's order within a due date, read straight off the index
                 .order_by(assignments.c.due_at, assignments.c.item_id)
                 .limit(limit).offset(offset or None))
        with self._reading() as conn:
            return [_item(row) for row in conn.execute(query).mappings()]

    def open_count(self, expert: str, dt: str | None = None) -> int:
        """Return how many items wait for ``expert``'s judgement (of date ``dt``'s batch, if given)."""
        self.expert(expert)
        query = sa.select(sa.func.count()).select_from(assignments).where(*self._open(expert, dt))
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    @staticmethod
    def _open(expert: str, dt: str | None) -> list[sa.ColumnElement[bool]]:
        """The conditions of ``expert``'s open assignments (of date ``dt``): ``ix_assignments_open`` answers them, and
        the date's items are found through its batch (a batch holds only items of its date)."""
        where = [assignments.c.expert == expert, assignments.c.judged == sa.false()]
        if dt is not None:
            batch_id = sa.select(batches.c.batch_id).where(batches.c.dt == dt).scalar_subquery()
            where.append(assignments.c.item_id.in_(sa.select(items.c.item_id).where(items.c.batch_id == batch_id)))
        return where

    def next_item(self, expert: str) -> QueueItem | None:
        """Return the expert's next open item, or ``None`` when their queue is empty."""
        queue = self.open_queue(expert, limit=1)
        return queue[0] if queue else None

    def progress(self, expert: str, since: datetime) -> dict[str, int]:
        """Return ``expert``'s work: ``open`` and ``assigned`` assignments, ``done`` (judged) ones, and
        ``judged_since``: the judgements they made at or after ``since`` that no retraction names (a correction
        counts as one more)."""
        self.expert(expert)
        retracted = annotations.alias("r")
        counts = {
            "open": sa.select(sa.func.count()).select_from(assignments).where(*self._open(expert, None)),
            "assigned": sa.select(sa.func.count()).select_from(assignments).where(assignments.c.expert == expert),
            "done": sa.select(sa.func.count()).select_from(assignments).where(
                assignments.c.expert == expert, assignments.c.judged == sa.true()),
            "judged_since": sa.select(sa.func.count()).select_from(annotations).where(
                annotations.c.expert == expert, annotations.c.created_at >= _utc(since),
                annotations.c.label.is_not(None),
                ~sa.exists().where(retracted.c.retracts == annotations.c.annotation_id)),
        }
        with self._reading() as conn:
            return {name: int(conn.execute(query).scalar_one()) for name, query in counts.items()}

    def item(self, item_id: int) -> QueueItem:
        """Return queue item ``item_id``; refuse an id not in the queue."""
        with self._reading() as conn:
            return _item(self._item_row(conn, item_id))

    def submit(self, expert: str, item_id: int, label: str, *, category: str | None = None,
               rationale: str | None = None, client: str = "api", request_id: str | None = None,
               created_at: datetime | None = None) -> Judgement:
        """Record ``expert``'s judgement of queue item ``item_id``; return the stored row.

        A second judgement of the same item is a correction: a new row, the old one stays in the trail. The same
        ``request_id`` again (a double key press, a retried request) returns the first row and writes nothing.
        """
        roster = self.expert(expert)
        self._check_judgement(label, category, rationale, client, request_id)
        rationale = rationale.strip() or None if rationale else None
        try:
            with self.engine.begin() as conn:
                row = self._item_row(conn, item_id)
                if not roster.judges(row["domain"]):
                    raise NotAllowed(f"expert {expert!r} may not judge domain {row['domain']!r} (their domains: "
                                        f"{', '.join(roster.domains)})")
                repeated = self._repeated(conn, expert, request_id, item_id=item_id, label=label)
                if repeated is not None:
                    return repeated
                annotation_id = conn.execute(annotations.insert().returning(annotations.c.annotation_id), {
                    "item_id": item_id, "expert": expert, "label": label, "category": category,
                    "rationale": rationale, "retracts": None, "created_at": _utc(created_at) if created_at else _now(),
                    "client": client, "request_id": request_id}).scalar_one()
                return self._judgement(conn, annotation_id)
        except sa.exc.IntegrityError:
            return self._after_race(expert, request_id, item_id=item_id, label=label)

    def retract_last(self, expert: str, *, client: str = "api", request_id: str | None = None) -> Judgement | None:
        """Take back ``expert``'s most recent effective judgement (undo) with a retraction row; return that row, or
        ``None`` when they have nothing left to take back. Their judgement of that item falls back to the one before
        (a correction undone), or the item returns to their open queue."""
        self.expert(expert)
        _check_client(client, request_id)
        try:
            return self._retract_last(expert, client, request_id)
        except sa.exc.IntegrityError:
            return self._after_race(expert, request_id)

    def _retract_last(self, expert: str, client: str, request_id: str | None) -> Judgement | None:
        with self.engine.begin() as conn:
            _lock(conn, f"dctp_expert:{expert}")  # two undos at once take back two judgements, not one twice
            repeated = self._repeated(conn, expert, request_id)
            if repeated is not None:
                return repeated
            retracted = annotations.alias("r")
            # the newest of the expert's judgements that no retraction names: walks ix_annotations_expert_id back
            last = conn.execute(sa.select(annotations.c.annotation_id, annotations.c.item_id).where(
                annotations.c.expert == expert, annotations.c.label.is_not(None),
                ~sa.exists().where(retracted.c.retracts == annotations.c.annotation_id))
                .order_by(annotations.c.annotation_id.desc()).limit(1)).mappings().first()
            if last is None:
                return None
            annotation_id = conn.execute(annotations.insert().returning(annotations.c.annotation_id), {
                "item_id": last["item_id"], "expert": expert, "label": None, "category": None, "rationale": None,
                "retracts": last["annotation_id"], "created_at": _now(), "client": client,
                "request_id": request_id}).scalar_one()
            return self._judgement(conn, annotation_id)

    def history(self, doc_id: str) -> DocHistory:
        """Return everything about ``doc_id``: its queue item, who it is assigned to, its whole trail."""
        with self._reading() as conn:
            row = conn.execute(sa.select(items).where(items.c.doc_id == doc_id)).mappings().first()
            if row is None:
                raise NotInQueue(f"document {doc_id!r} is not in the annotation queue")
            assigned = conn.execute(sa.select(assignments.c.expert).where(assignments.c.item_id == row["item_id"])
                                    .order_by(assignments.c.expert)).scalars().all()
            trail = [_judgement(r, doc_id) for r in conn.execute(
                sa.select(annotations).where(annotations.c.item_id == row["item_id"])
                .order_by(annotations.c.annotation_id)).mappings()]
        return DocHistory(_item(row), list(assigned), trail, effective_judgements(trail))

    def counts(self, dt: str | None = None) -> dict:
        """Return queue and judgement counts (overall, or of date ``dt``'s batch): items, assignments open and done,
        effective labels, and the same per expert."""
        of_date = sa.select(items.c.item_id).where(items.c.dt == dt) if dt is not None else None
        n_items = sa.select(sa.func.count()).select_from(items)
        pairs = (sa.select(assignments.c.expert, assignments.c.judged, sa.func.count())
                 .group_by(assignments.c.expert, assignments.c.judged))
        if of_date is not None:
            n_items = n_items.where(items.c.dt == dt)
            pairs = pairs.where(assignments.c.item_id.in_(of_date))
        effective = _effective(of_date)
        with self._reading() as conn:
            total_items = int(conn.execute(n_items).scalar_one())
            assigned = conn.execute(pairs).all()
            labelled = conn.execute(sa.select(effective.c.expert, effective.c.label, sa.func.count())
                                    .group_by(effective.c.expert, effective.c.label)).all()
            judged_items = int(conn.execute(sa.select(sa.func.count(sa.distinct(effective.c.item_id)))).scalar_one())
        per_expert: dict[str, Counter] = {}
        for expert, judged, n in assigned:
            per_expert.setdefault(expert, Counter())["done" if judged else "open"] += int(n)
        labels: Counter = Counter()
        for expert, label, n in labelled:
            per_expert.setdefault(expert, Counter())[label] += int(n)
            labels[label] += int(n)
        return {"items": total_items, "assignments": sum(int(n) for *_, n in assigned),
                "open": sum(c["open"] for c in per_expert.values()),
                "done": sum(c["done"] for c in per_expert.values()),
                "judgements": sum(labels.values()), "judged_items": judged_items,
                "labels": {label: labels[label] for label in LABELS},
                "experts": {e: {k: c[k] for k in ("open", "done", *LABELS)} for e, c in sorted(per_expert.items())}}

    def queue_summary(self, expert: str | None = None, dt: str | None = None) -> list[dict]:
        """Return what is waiting, per expert and stratum: assigned, done, open, and the earliest open due date."""
        if expert is not None:
            self.expert(expert)
        is_open = assignments.c.judged == sa.false()
        query = (sa.select(assignments.c.expert, items.c.stratum, sa.func.count().label("assigned"),
                           sa.func.sum(sa.case((is_open, 0), else_=1)).label("done"),
                           sa.func.sum(sa.case((is_open, 1), else_=0)).label("open"),
                           sa.func.min(sa.case((is_open, assignments.c.due_at))).label("next_due"))
                 .join(items, items.c.item_id == assignments.c.item_id)
                 .group_by(assignments.c.expert, items.c.stratum))
        if expert is not None:
            query = query.where(assignments.c.expert == expert)
        if dt is not None:
            query = query.where(items.c.dt == dt)
        with self._reading() as conn:
            rows = conn.execute(query).mappings().all()
        # sorted here, not by the database: PostgreSQL's collation would order names differently from SQLite's
        return [{"expert": r["expert"], "stratum": r["stratum"], "assigned": int(r["assigned"]),
                 "done": int(r["done"]), "open": int(r["open"]), "next_due": _utc(r["next_due"])}
                for r in sorted(rows, key=lambda r: (r["expert"], r["stratum"]))]

    def batch_progress(self, limit: int = 20, offset: int = 0) -> tuple[list[dict], int]:
        """Return a page of batches, newest date first, with each expert's work on it, and how many batches there
        are. A batch: ``batch_id, dt, items, created_at, table_version`` and ``experts``: ``{expert: {assigned,
        done, open, good, bad, skip}}`` (done: assignments with an effective judgement; the labels are those
        judgements)."""
        _check_page(limit, offset)
        with self._reading() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar_one())
            page = conn.execute(sa.select(batches.c.batch_id, batches.c.dt, batches.c["items"], batches.c.created_at,
                                          batches.c.table_version)
                                .order_by(batches.c.dt.desc()).limit(limit).offset(offset or None)).mappings().all()
            ids = [r["batch_id"] for r in page]
            in_page = items.c.batch_id.in_(ids)
            is_done = assignments.c.judged == sa.true()
            work = (sa.select(items.c.batch_id, assignments.c.expert, sa.func.count(),
                              sa.func.sum(sa.case((is_done, 1), else_=0)))
                    .join(items, items.c.item_id == assignments.c.item_id).where(in_page)
                    .group_by(items.c.batch_id, assignments.c.expert))
            # the labels in a query of their own, driven by the effective judgements: an outer join of every
            # assignment to them makes SQLite scan the judgements once per assignment
            effective = _effective(sa.select(items.c.item_id).where(in_page))
            labelled = (sa.select(items.c.batch_id, effective.c.expert, effective.c.label, sa.func.count())
                        .select_from(effective.join(assignments, sa.and_(
                            assignments.c.item_id == effective.c.item_id, assignments.c.expert == effective.c.expert))
                            .join(items, items.c.item_id == effective.c.item_id))
                        .group_by(items.c.batch_id, effective.c.expert, effective.c.label))
            work_rows = conn.execute(work).all() if ids else []
            label_rows = conn.execute(labelled).all() if ids else []
        experts: dict[int, dict[str, dict]] = {batch_id: {} for batch_id in ids}
        for batch_id, expert, assigned, done in sorted(work_rows, key=lambda r: r[1]):
            experts[batch_id][expert] = {"assigned": int(assigned), "done": int(done), "open": int(assigned - done),
                                         **dict.fromkeys(LABELS, 0)}
        for batch_id, expert, label, n in label_rows:
            experts[batch_id][expert][label] = int(n)
        return [{**r, "created_at": _utc(r["created_at"]), "experts": experts[r["batch_id"]]} for r in page], total

    # -- the pipeline's side -----------------------------------------------------------------------------------

    def batch(self, dt: str) -> BatchInfo | None:
        """Return date ``dt``'s batch with the number of judgements made on it, or ``None``."""
        with self._reading() as conn:
            return self._batch(conn, dt)

    def queued_doc_ids(self, exclude_dt: str | None = None) -> list[str]:
        """Return the doc_id of every queued document (except those of date ``exclude_dt``'s batch)."""
        query = sa.select(items.c.doc_id)
        if exclude_dt is not None:
            query = query.join(batches, batches.c.batch_id == items.c.batch_id).where(batches.c.dt != exclude_dt)
        with self._reading() as conn:
            return list(conn.execute(query).scalars())

    def open_load(self, exclude_dt: str | None = None) -> dict[str, int]:
        """Return each roster expert's open assignments (assigned, not yet judged), outside ``exclude_dt``'s batch."""
        query = (sa.select(assignments.c.expert, sa.func.count()).where(assignments.c.judged == sa.false())
                 .group_by(assignments.c.expert))
        if exclude_dt is not None:
            query = query.where(assignments.c.item_id.in_(sa.select(items.c.item_id).where(items.c.dt != exclude_dt)))
        with self._reading() as conn:
            counts = dict(conn.execute(query).all())
        return {name: int(counts.get(name, 0)) for name in self.roster}

    def replace_batch(self, *, dt: str, dag_id: str, run_id: str | None, budget: int, strategy_mix: dict,
                      config_hash: str, mlflow_run_id: str | None, staged_version: str | None,
                      new_items: Sequence[NewItem], assigned_at: datetime | None = None) -> tuple[BatchInfo, bool]:
        """Store ``new_items`` as date ``dt``'s batch, replacing an earlier batch of the date only if nobody has
        judged any of it; return the batch and whether it was (re)written (``False``: a judged batch was kept)."""
        for item in new_items:
            if item.dt != dt:
                raise FeedbackError(f"queue item {item.doc_id!r} is of dt={item.dt}, not of the batch's {dt}")
            if item.pool not in ("kept", "filtered"):
                raise FeedbackError(f"queue item {item.doc_id!r}: pool must be kept or filtered, not {item.pool!r}")
            for name in item.experts:
                self.expert(name)
        now = _utc(assigned_at) if assigned_at else _now()
        due = now + timedelta(days=self.config.due_days)
        with self.engine.begin() as conn:
            _lock(conn, f"dctp_batch:{dt}")  # two runs of one date choose one after the other
            existing = self._batch(conn, dt)
            if existing is not None and existing.judged:
                return existing, False
            if existing is not None:
                old = sa.select(items.c.item_id).where(items.c.batch_id == existing.batch_id)
                conn.execute(assignments.delete().where(assignments.c.item_id.in_(old)))
                conn.execute(items.delete().where(items.c.batch_id == existing.batch_id))
                conn.execute(batches.delete().where(batches.c.batch_id == existing.batch_id))
            batch_id = conn.execute(batches.insert().returning(batches.c.batch_id), {
                "dag_id": dag_id, "dt": dt, "run_id": run_id, "created_at": now, "budget": budget,
                "strategy_mix": json.dumps(strategy_mix, sort_keys=True), "config_hash": config_hash,
                "mlflow_run_id": mlflow_run_id, "staged_version": staged_version, "table_version": None,
                "items": len(new_items)}).scalar_one()
            rows = []
            for position, item in enumerate(new_items):
                values = {f.name: getattr(item, f.name) for f in fields(item) if f.name != "experts"}
                values.update(batch_id=batch_id, position=position, staged_version=staged_version,
                              scores=json.dumps(_json_safe(item.scores), sort_keys=True),
                              duplicates=json.dumps(_json_safe(item.duplicates)) if item.duplicates else None,
                              quality=_finite(item.quality), strategy_score=_finite(item.strategy_score))
                rows.append(values)
            # one executemany; ids come back in the items' order, and are handed out in it (the queue's order)
            item_ids = conn.execute(items.insert().returning(items.c.item_id, sort_by_parameter_order=True),
                                    rows).scalars().all() if rows else []
            # ``judged`` is the triggers' to set (a document judged before it was assigned is done at once)
            pairs = [{"item_id": item_id, "expert": name, "assigned_at": now, "due_at": due}
                     for item_id, item in zip(item_ids, new_items, strict=True) for name in item.experts]
            if pairs:
                conn.execute(assignments.insert(), pairs)
            return self._batch(conn, dt), True

    def stamp_table_version(self, dt: str, version: int, run_id: str | None = None) -> bool:
        """Record the Delta table version that exported date ``dt``'s batch (only when run ``run_id`` chose it: a
        batch kept from an earlier run keeps the version it was exported in); ``False`` when nothing was stamped."""
        with self.engine.begin() as conn:
            query = sa.select(batches.c.batch_id).where(batches.c.dt == dt)
            if run_id is not None:
                query = query.where(batches.c.run_id == run_id)
            batch_id = conn.execute(query).scalar()
            if batch_id is None:
                return False
            conn.execute(batches.update().where(batches.c.batch_id == batch_id).values(table_version=int(version)))
            conn.execute(items.update().where(items.c.batch_id == batch_id).values(table_version=int(version)))
            return True

    def judged_documents(self) -> list[dict]:
        """Return every queued document with an effective good/bad judgement: ``doc_id``, ``dt``, ``text`` and its
        ``good`` and ``bad`` counts (skips left out)."""
        with self._reading() as conn:
            trail = [_judgement(r, "") for r in conn.execute(sa.select(annotations)).mappings()]
            counts: dict[int, Counter] = {}
            for j in effective_judgements(trail, by_item=True).values():
                if j.label in ("good", "bad"):
                    counts.setdefault(j.item_id, Counter())[j.label] += 1
            rows = {r["item_id"]: r for r in conn.execute(sa.select(
                items.c.item_id, items.c.doc_id, items.c.dt, items.c.text).where(
                items.c.item_id.in_(sa.select(annotations.c.item_id).where(
                    annotations.c.label.in_(("good", "bad")))))).mappings()}
        return [{**{k: rows[i][k] for k in ("doc_id", "dt", "text")}, "good": c["good"], "bad": c["bad"]}
                for i, c in sorted(counts.items())]

    # -- import and export -------------------------------------------------------------------------------------

    def import_judgements(self, rows: Iterable[dict], *, client: str = "import") -> dict:
        """Store judgements made in another tool (``doc_id, expert, label[, category, rationale, created_at]``).

        All or nothing: every row is checked first and all problems are reported together. A row already imported
        (same doc, expert, label, category, rationale and time) is skipped, so importing a file twice adds nothing.
        """
        rows = list(rows)
        _check_client(client, None)
        problems: list[str] = []
        with self._reading() as conn:
            item_rows = {r["doc_id"]: r for chunk in _chunks({str(r.get("doc_id")) for r in rows})
                         for r in conn.execute(sa.select(items.c.item_id, items.c.doc_id, items.c.domain)
                                               .where(items.c.doc_id.in_(chunk))).mappings()}
        prepared = []
        for number, row in enumerate(rows, start=1):
            try:
                doc_id, expert, label = str(row.get("doc_id") or ""), row.get("expert"), row.get("label")
                category = row.get("category") or None
                rationale = row.get("rationale") or None
                roster = self.expert(expert)
                self._check_judgement(label, category, rationale, client, None)
                if doc_id not in item_rows:
                    raise FeedbackError(f"document {doc_id!r} is not in the annotation queue")
                if not roster.judges(item_rows[doc_id]["domain"]):
                    raise FeedbackError(f"expert {expert!r} may not judge domain {item_rows[doc_id]['domain']!r}")
                created = _parse_time(row.get("created_at"))
            except (FeedbackError, ValueError) as exc:
                problems.append(f"row {number}: {exc}")
                continue
            key = hashlib.sha256(json.dumps([doc_id, expert, label, category, rationale,
                                             created.isoformat() if created else None]).encode()).hexdigest()[:40]
            prepared.append({"item_id": item_rows[doc_id]["item_id"], "expert": expert, "label": label,
                             "category": category, "rationale": rationale, "retracts": None,
                             "created_at": created or _now(), "client": client, "request_id": f"import:{key}"})
        if problems:
            shown = "; ".join(problems[:20]) + (f"; … {len(problems) - 20} more" if len(problems) > 20 else "")
            raise FeedbackError(f"{len(problems)} of {len(rows)} rows refused, nothing imported: {shown}")
        with self.engine.begin() as conn:
            seen = {tuple(r) for chunk in _chunks({p["request_id"] for p in prepared})
                    for r in conn.execute(sa.select(annotations.c.expert, annotations.c.request_id).where(
                        annotations.c.request_id.in_(chunk)))}
            fresh, skipped = [], 0
            for p in prepared:
                if (p["expert"], p["request_id"]) in seen:
                    skipped += 1
                    continue
                seen.add((p["expert"], p["request_id"]))
                fresh.append(p)
            if fresh:
                conn.execute(annotations.insert(), fresh)
        return {"rows": len(rows), "imported": len(fresh), "already_there": skipped}

    def export_judgements(self, *, trail: bool = False) -> list[dict]:
        """Return each expert's effective judgement per document (or, with ``trail``, every row of the trail)."""
        with self._reading() as conn:
            docs = dict(conn.execute(sa.select(items.c.item_id, items.c.doc_id)).all())
            rows = [_judgement(r, docs[r["item_id"]]) for r in
                    conn.execute(sa.select(annotations).order_by(annotations.c.annotation_id)).mappings()]
        chosen = rows if trail else sorted(effective_judgements(rows, by_item=True).values(),
                                           key=lambda j: j.annotation_id)
        keys = ("doc_id", "expert", "label", "category", "rationale", "created_at")
        if trail:
            keys += ("annotation_id", "retracts", "client")
        return [{k: getattr(j, k) for k in keys} for j in chosen]

    # -- internals ---------------------------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        with self.engine.connect().execution_options(**{db.READ_ONLY: True}) as conn:
            yield conn

    def _item_row(self, conn: sa.Connection, item_id: int) -> sa.RowMapping:
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise FeedbackError(f"queue item id must be an integer, got {item_id!r}")
        row = conn.execute(sa.select(items).where(items.c.item_id == item_id)).mappings().first()
        if row is None:
            raise NotInQueue(f"queue item {item_id} does not exist: judge only documents in the annotation queue")
        return row

    def _repeated(self, conn: sa.Connection, expert: str, request_id: str | None, **same: Any) -> Judgement | None:
        """Return the row an earlier call with this ``request_id`` wrote; refuse the id reused for something else."""
        if request_id is None:
            return None
        row = conn.execute(sa.select(annotations.c.annotation_id, annotations.c.item_id, annotations.c.label).where(
            annotations.c.expert == expert, annotations.c.request_id == request_id)).mappings().first()
        if row is None:
            return None
        if any(row[k] != v for k, v in same.items()) or (not same and row["label"] is not None):
            raise RequestIdReused(f"request id {request_id!r} of {expert!r} was already used for another judgement")
        return self._judgement(conn, row["annotation_id"])

    def _after_race(self, expert: str, request_id: str | None, **same: Any) -> Judgement:
        """A concurrent call with the same request id won the insert: return its row (the unique key held)."""
        if request_id is not None:
            with self._reading() as conn:
                repeated = self._repeated(conn, expert, request_id, **same)
            if repeated is not None:
                return repeated
        raise

    def _judgement(self, conn: sa.Connection, annotation_id: int) -> Judgement:
        row = conn.execute(sa.select(annotations, items.c.doc_id).join(
            items, items.c.item_id == annotations.c.item_id).where(
            annotations.c.annotation_id == annotation_id)).mappings().one()
        return _judgement(row, row["doc_id"])

    def _batch(self, conn: sa.Connection, dt: str) -> BatchInfo | None:
        row = conn.execute(sa.select(batches).where(batches.c.dt == dt)).mappings().first()
        if row is None:
            return None
        judged = conn.execute(sa.select(sa.func.count()).select_from(annotations).join(
            items, items.c.item_id == annotations.c.item_id).where(
            items.c.batch_id == row["batch_id"], annotations.c.label.is_not(None))).scalar_one()
        return BatchInfo(**{**row, "created_at": _utc(row["created_at"]),
                            "strategy_mix": json.loads(row["strategy_mix"])}, judged=int(judged))


def _effective(item_ids: sa.Select | None = None) -> sa.Subquery:
    """Return every (item, expert)'s effective judgement as a subquery (``item_id, expert, label``): their newest
    judgement that no retraction names; only of the items ``item_ids`` selects, if given."""
    retracted = annotations.alias("r")
    newest = (sa.select(sa.func.max(annotations.c.annotation_id))
              .where(annotations.c.label.is_not(None),
                     ~sa.exists().where(retracted.c.retracts == annotations.c.annotation_id))
              .group_by(annotations.c.item_id, annotations.c.expert))
    if item_ids is not None:
        newest = newest.where(annotations.c.item_id.in_(item_ids))
    # a plain IN, not a window function: both engines join the result through annotations' indexes
    return (sa.select(annotations.c.item_id, annotations.c.expert, annotations.c.label)
            .where(annotations.c.annotation_id.in_(newest)).subquery("effective"))


def effective_judgements(trail: Sequence[Judgement], by_item: bool = False) -> dict:
    """Return each expert's latest judgement that no retraction names: ``{expert: j}`` for one document's trail,
    ``{(item_id, expert): j}`` with ``by_item``."""
    retracted = {j.retracts for j in trail if j.retracts is not None}
    out: dict = {}
    for j in sorted(trail, key=lambda j: j.annotation_id):
        if j.label is not None and j.annotation_id not in retracted:
            out[(j.item_id, j.expert) if by_item else j.expert] = j
    return out


def _lock(conn: sa.Connection, key: str) -> None:
    """Serialise writers of ``key`` on PostgreSQL (a transaction-scoped advisory lock); SQLite's ``BEGIN IMMEDIATE``
    already serialises every writer."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def _chunks(values: set, size: int = 5_000) -> Iterator[list]:
    """Split an IN list: SQLite allows at most 32,766 bound parameters per statement."""
    ordered = sorted(values)
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def _check_page(limit: int | None, offset: int) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise FeedbackError(f"limit must be a whole number of at least 0 (or None), got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise FeedbackError(f"offset must be a whole number of at least 0, got {offset!r}")


def _check_client(client: str, request_id: str | None) -> None:
    if not isinstance(client, str) or not re.match(CLIENT_PATTERN, client):
        raise FeedbackError(f"client {client!r} is not valid: name the tool a judgement came from ({CLIENT_PATTERN})")
    if request_id is not None and (not isinstance(request_id, str) or not 1 <= len(request_id) <= 128):
        raise FeedbackError("a request id is text of 1 to 128 characters")


def _item(row: sa.RowMapping) -> QueueItem:
    values = {k: row[k] for k in QueueItem.__dataclass_fields__ if k in row}
    values["scores"] = json.loads(row["scores"])
    values["duplicates"] = json.loads(row["duplicates"]) if row.get("duplicates") else []
    if "due_at" in values:
        values["due_at"] = _utc(values["due_at"])
    return QueueItem(**values)


def _judgement(row: sa.RowMapping, doc_id: str) -> Judgement:
    values = {k: row[k] for k in Judgement.__dataclass_fields__ if k in row and k != "doc_id"}
    return Judgement(doc_id=doc_id, **{**values, "created_at": _utc(values["created_at"])})


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive (they were stored as UTC); PostgreSQL aware."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return _utc(value)
    try:
        return _utc(datetime.fromisoformat(str(value)))
    except ValueError as exc:
        raise FeedbackError(f"created_at {value!r} is not an ISO 8601 time") from exc


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)


def _json_safe(value: Any) -> Any:
    """Scores as JSON: NaN and infinities become null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return _finite(value)
    if hasattr(value, "item"):  # NumPy scalars
        return _json_safe(value.item())
    return value
