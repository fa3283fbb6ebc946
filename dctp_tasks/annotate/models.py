"""The JSON API's request and response bodies (FastAPI documents them in the app's OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dctp_tasks.feedback.store import CLIENT_PATTERN, MAX_RATIONALE


class Progress(BaseModel):
    open: int = Field(description="Items assigned to the expert that they have not judged")
    assigned: int = Field(description="Items ever assigned to the expert")
    done: int = Field(description="Assigned items the expert has judged")
    judged_today: int = Field(description="Judgements the expert made since midnight UTC (undone ones excluded)")


class Me(BaseModel):
    expert: str
    weight: float
    seniority: str
    domains: list[str] = Field(description="Domains the expert may judge (empty: all)")
    categories: list[str] = Field(description="Categories a judgement may name")
    progress: Progress


class Duplicate(BaseModel):
    model_config = ConfigDict(extra="allow")

    doc_id: str
    reason: str | None = None
    detail: str | None = None
    text: str | None = Field(None, description="The start of the duplicate's text, as untrusted as the document's")


class Item(BaseModel):
    """A queued document as it will be exported, and why it was chosen."""

    item_id: int
    batch_id: int
    doc_id: str
    dt: str
    source: str | None
    domain: str | None
    lang: str | None
    text: str = Field(description="Untrusted document text: render it escaped")
    prompt: str | None
    response: str | None
    scores: dict = Field(description="Every scorer's values: {scorer: {field: value}}")
    quality: float | None
    verdict: str | None
    filter_reason: str | None
    filter_detail: str | None
    pool: str = Field(description="kept (will be exported) or filtered (an audit of what the filters removed)")
    strategy: str
    strategy_score: float | None
    stratum: str
    synthetic: bool
    due_at: datetime | None
    duplicates: list[Duplicate] = Field(default_factory=list,
                                        description="Rows deduplication removed as this document's duplicates")


class Page(BaseModel):
    total: int
    limit: int
    offset: int


class QueuePage(Page):
    items: list[Item]


class NextItem(BaseModel):
    item: Item | None = Field(description="The next item to judge; null when the queue is empty")
    progress: Progress


class JudgementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: int
    label: Literal["good", "bad", "skip"]
    category: str | None = Field(None, description="One of the configured categories")
    rationale: str | None = Field(None, max_length=MAX_RATIONALE)
    request_id: str = Field(min_length=1, max_length=128,
                            description="Chosen by the client, unique per judgement: the same id again (a double key "
                                        "press, a retry) returns the first judgement and writes nothing")


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, description="Makes a retried undo take back one judgement")


class Judgement(BaseModel):
    annotation_id: int
    item_id: int
    doc_id: str
    expert: str
    label: str | None = Field(description="good, bad or skip; null on a retraction")
    category: str | None
    rationale: str | None
    retracts: int | None = Field(description="The judgement a retraction takes back")
    created_at: datetime
    client: str = Field(pattern=CLIENT_PATTERN)
    request_id: str | None


class UndoOut(BaseModel):
    retraction: Judgement | None = Field(description="The retraction row written; null when nothing was left to undo")


class ConsensusState(BaseModel):
    merge_id: int
    label: str
    p_good: float | None
    confidence: float | None
    judgements: int
    method: str
    annotation_ids: list[int]
    created_at: datetime
    run_id: str | None
    table_version: int | None = Field(description="The dataset version the merge's changes landed in")


class Document(BaseModel):
    item: Item
    assigned: list[str]
    judgements: list[Judgement] = Field(description="The whole audit trail, oldest first, retractions included")
    effective: dict[str, Judgement] = Field(description="Each expert's judgement that counts")
    consensus: ConsensusState | None
    history: list[ConsensusState] = Field(description="Every consensus the document has had, oldest first")


class ExpertProgress(BaseModel):
    assigned: int
    done: int
    open: int
    good: int
    bad: int
    skip: int
    reliability: float | None = None
    agreement: float | None = None


class Batch(BaseModel):
    batch_id: int
    dt: str
    items: int
    created_at: datetime
    table_version: int | None
    alpha: float | None = Field(description="Krippendorff's alpha of the batch at its latest merge (null before one)")
    merge_id: int | None
    experts: dict[str, ExpertProgress]


class BatchPage(Page):
    batches: list[Batch]
