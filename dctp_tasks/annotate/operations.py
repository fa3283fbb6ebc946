"""What the app's pages and JSON API both do: judge, undo, read a document, a page of batches, progress.

Each takes the signed-in ``Expert`` and answers with the API's models; a store refusal becomes the HTTP status that
says why (404 not in the queue, 403 a domain not theirs, 409 a reused request id, 422 anything else).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, status

from dctp_tasks.annotate import models
from dctp_tasks.config import ExpertConfig
from dctp_tasks.feedback import consensus_db
from dctp_tasks.feedback.store import (
    FeedbackError,
    FeedbackStore,
    NotAllowed,
    NotInQueue,
    QueueItem,
    RequestIdReused,
)

CLIENT = "web"
"""The ``client`` of judgements made through the app (pages and API alike)."""


@dataclass(frozen=True)
class Expert:
    """The signed-in user, found on the roster, and the store opened for them."""

    name: str
    roster: ExpertConfig
    store: FeedbackStore


def judge(expert: Expert, body: models.JudgementIn) -> models.Judgement:
    try:
        written = expert.store.submit(expert.name, body.item_id, body.label, category=body.category,
                                      rationale=body.rationale, client=CLIENT, request_id=body.request_id)
    except FeedbackError as exc:
        raise refused(exc) from exc
    return models.Judgement(**asdict(written))


def undo(expert: Expert, request_id: str) -> models.Judgement | None:
    try:
        written = expert.store.retract_last(expert.name, client=CLIENT, request_id=request_id)
    except FeedbackError as exc:
        raise refused(exc) from exc
    return models.Judgement(**asdict(written)) if written else None


def document(expert: Expert, doc_id: str) -> models.Document:
    try:
        history = expert.store.history(doc_id)
    except FeedbackError as exc:
        raise refused(exc) from exc
    states = [models.ConsensusState(**{k: r[k] for k in models.ConsensusState.model_fields})
              for r in consensus_db.consensus_history(expert.store, history.item.item_id)]
    return models.Document(item=item(history.item), assigned=history.assigned,
                           judgements=[models.Judgement(**asdict(j)) for j in history.trail],
                           effective={e: models.Judgement(**asdict(j)) for e, j in history.effective.items()},
                           consensus=states[-1] if states else None, history=states)


def batches(expert: Expert, limit: int, offset: int) -> models.BatchPage:
    rows, total = expert.store.batch_progress(limit=limit, offset=offset)
    alpha, reliability = consensus_db.batch_agreement(expert.store, [r["dt"] for r in rows])
    out = []
    for row in rows:
        merge_id, batch_alpha = alpha.get(row["dt"], (None, None))
        out.append(models.Batch(
            batch_id=row["batch_id"], dt=row["dt"], items=row["items"], created_at=row["created_at"],
            table_version=row["table_version"], alpha=batch_alpha, merge_id=merge_id,
            experts={name: models.ExpertProgress(**counts, **reliability.get(name, {}))
                     for name, counts in sorted(row["experts"].items())}))
    return models.BatchPage(total=total, limit=limit, offset=offset, batches=out)


def progress(expert: Expert) -> models.Progress:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = expert.store.progress(expert.name, since=today)
    return models.Progress(open=counts["open"], assigned=counts["assigned"], done=counts["done"],
                           judged_today=counts["judged_since"])


def item(queued: QueueItem) -> models.Item:
    return models.Item(**{k: v for k, v in asdict(queued).items() if k in models.Item.model_fields})


def score_rows(queued: QueueItem | models.Item) -> list[tuple[str, str, Any]]:
    """The item's scores as (scorer, field, value) rows, for a table."""
    return [(scorer, name, value) for scorer, values in sorted(queued.scores.items())
            for name, value in sorted((values if isinstance(values, dict) else {"value": values}).items())]


def refused(exc: FeedbackError) -> HTTPException:
    """The HTTP answer to a store refusal."""
    code = {NotInQueue: status.HTTP_404_NOT_FOUND, NotAllowed: status.HTTP_403_FORBIDDEN,
            RequestIdReused: status.HTTP_409_CONFLICT}.get(type(exc), status.HTTP_422_UNPROCESSABLE_CONTENT)
    return HTTPException(code, str(exc))
