"""Domain relevance: cosine of a doc's embedding to its domain's centroid (configured examples and/or kept docs).

Kept docs' per-domain vector sums go to ``state/centroids/dt=D/`` (``update_centroids``, called after deciding),
with the encoder that made them; date D reads only dates < D, so re-running dates in any order gives the same
centroids, and only sums made by its own encoder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dctp_tasks.embeddings import ENCODER_KEY, encoder_identity, encoder_mismatch, encoder_name, stored_encoder
from dctp_tasks.publish import earlier_partitions, publish
from dctp_tasks.quality.base import Field as ScoreField
from dctp_tasks.quality.base import Rule, Scorer, ScoringContext
from dctp_tasks.quality.embeddings import EmbeddingConfig, EmbeddingLookup, encode
from dctp_tasks.storage import Storage, state_dir

log = logging.getLogger(__name__)

STATE = "centroids"


class RelevanceConfig(BaseModel):
    """Which texts define each domain, and how cosine maps to the composite."""

    model_config = ConfigDict(extra="forbid")

    references: dict[str, list[str]] = Field(default_factory=dict)
    """Example texts per domain (``{domain: [text, …]}``), embedded once; a domain with neither examples nor
    accepted history has no centroid and its docs score NaN (unscored, never filtered)."""
    from_accepted: bool = True
    """Also build centroids from the kept docs of earlier dates (``state/centroids``, dates < D only)."""
    min_accepted: int = Field(20, ge=1)
    """Kept docs a domain needs in history before their centroid is used (docs); 20 keeps one odd day from
    defining a domain."""
    reference_weight: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the configured examples' direction in the centroid when a domain has both (0-1); 0.5 stops
    accepted data, which grows every day, from drowning out what the team wrote down."""
    quality_floor: float = 0.1
    """Cosine mapped to quality 0 (linear, clipped). Measured with MiniLM on AG News (centroids of 50 articles):
    other-topic articles have median cosine 0.03-0.10 to a topic's centroid, 0.1 is about their 75th percentile."""
    quality_ceiling: float = 0.5
    """Cosine mapped to quality 1 (linear, clipped). Same measurement: on-topic articles have median 0.29-0.38 and
    95th percentile 0.47-0.54 to their own topic's centroid."""
    off_topic: float | None = None
    """Default threshold of rule ``off_topic`` (cosine, remove below); ``None`` = off until a team measures its
    domain (on AG News the topics separate around 0.15-0.2, but the right value depends on the domain)."""
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    """The encoder; keep it equal to ``dedup_semantic``'s so its stored vectors are reused."""

    @field_validator("quality_ceiling")
    @classmethod
    def _above_floor(cls, value: float, info) -> float:
        if value <= info.data.get("quality_floor", 0.0):
            raise ValueError(f"relevance.quality_ceiling ({value}) must exceed quality_floor")
        return value


class RelevanceScorer(Scorer):
    """Score ``relevance``: float32 cosine to the doc's domain centroid (NaN without one)."""

    name = "relevance"
    gpu = True

    def __init__(self, config: RelevanceConfig | None = None) -> None:
        self.config = config or RelevanceConfig()
        self.fields = [ScoreField("relevance", pa.float32(),
                                  "cosine similarity (-1..1) of the doc's embedding to its domain's centroid; "
                                  "NaN when the domain has no centroid")]
        self.rules = [Rule("off_topic", "relevance", "<", self.config.off_topic,
                           "cosine to the domain centroid below the threshold; off by default (per-domain value)")]
        self._references: dict[str, np.ndarray] | None = None
        self._domains: pa.Array = pa.array([], pa.string())
        self._centroids = np.zeros((0, 0), dtype=np.float32)
        self._lookup: EmbeddingLookup | None = None

    def prepare(self, context: ScoringContext) -> None:
        self._lookup = EmbeddingLookup.shared(context, self.config.embedding)
        accepted = (accepted_centroids(context.storage, context.dt, min_docs=self.config.min_accepted,
                                       encoder=encoder_name(self.config.embedding))
                    if self.config.from_accepted else {})
        names, rows = [], []
        for domain in sorted(set(self.reference_centroids()) | set(accepted)):
            names.append(domain)
            rows.append(_blend(self.reference_centroids().get(domain), accepted.get(domain),
                               self.config.reference_weight))
        self._domains = pa.array(names, pa.string())
        self._centroids = np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
        log.info("relevance dt=%s: centroids for %d domains (%s)", context.dt, len(names), ", ".join(names))

    def cache_token(self, context: ScoringContext) -> str:
        """Scores depend on the accepted centroids of earlier dates: the version each date has published."""
        if not self.config.from_accepted:
            return ""
        return ";".join(f"{day}/{folder.rsplit('/', 1)[-1]}"
                        for day, folder in earlier_partitions(context.storage, state_dir(STATE), context.dt))

    def reference_centroids(self) -> dict[str, np.ndarray]:
        """Return the unit mean vector of each domain's configured examples (embedded once per scorer)."""
        if self._references is None:
            self._references = {}
            for domain, texts in sorted(self.config.references.items()):
                if texts:
                    self._references[domain] = _unit(encode(texts, self.config.embedding).mean(axis=0))
        return self._references

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        if self._lookup is None:
            raise RuntimeError("RelevanceScorer.score called before prepare()")
        out = np.full(batch.num_rows, np.nan, dtype=np.float32)
        if not len(self._domains) or not batch.num_rows:
            return {"relevance": out}
        which = pc.index_in(batch.column("domain"), value_set=self._domains)
        which = which.to_numpy(zero_copy_only=False).astype(np.float64)
        has = ~np.isnan(which)
        if has.any():
            vectors = self._lookup.vectors(batch)[has]
            centroids = self._centroids[which[has].astype(np.int64)]
            norms = np.linalg.norm(vectors, axis=1)
            # Stored vectors are float16-rounded: divide by the norm rather than trust it is exactly 1.
            out[has] = np.einsum("ij,ij->i", vectors, centroids) / np.where(norms > 0, norms, 1.0)
        return {"relevance": out}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray | None:
        """Return ``(cosine - quality_floor) / (quality_ceiling - quality_floor)`` clipped to [0, 1]; NaN stays."""
        cosine = np.asarray(scores["relevance"], dtype=np.float64)
        low, high = self.config.quality_floor, self.config.quality_ceiling
        return np.clip((cosine - low) / (high - low), 0.0, 1.0)


def centroids_schema(dim: int) -> pa.Schema:
    """Return the schema of ``state/centroids/dt=D``: per domain, the sum and count of kept docs' vectors."""
    return pa.schema([("domain", pa.string()), ("count", pa.int64()), ("sum", pa.list_(pa.float64(), dim))])


class CentroidSums:
    """Per-domain sums and counts of unit vectors, added batch by batch (bounded memory: domains x dim)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, domains: pa.Array | pa.ChunkedArray, vectors: np.ndarray) -> None:
        """Add each row's vector to its domain's sum; rows without a domain are skipped."""
        domains = domains.combine_chunks() if isinstance(domains, pa.ChunkedArray) else domains
        encoded = domains.dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.float64)
        has = ~np.isnan(codes)
        if not has.any():
            return
        codes = codes[has].astype(np.int64)
        names = encoded.dictionary.to_pylist()
        sums = np.zeros((len(names), vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, codes, vectors[has].astype(np.float64))
        counts = np.bincount(codes, minlength=len(names))
        for i, name in enumerate(names):
            if counts[i]:
                self.sums[name] = self.sums.get(name, 0.0) + sums[i]
                self.counts[name] = self.counts.get(name, 0) + int(counts[i])

    def write(self, storage: Storage, dt: str, dim: int, encoder: dict | None = None) -> None:
        """Publish these sums as ``state/centroids/dt={dt}`` (sorted by domain: same input, same bytes)."""
        names = sorted(self.sums)
        flat = pa.array(np.concatenate([self.sums[n] for n in names]) if names else np.zeros(0), pa.float64())
        table = pa.table({"domain": pa.array(names, pa.string()),
                          "count": pa.array([self.counts[n] for n in names], pa.int64()),
                          "sum": pa.FixedSizeListArray.from_arrays(flat, dim)}, schema=centroids_schema(dim))
        schema = centroids_schema(dim)
        if encoder is not None:  # recorded in the version's own files: a reader checks the files it reads
            schema = schema.with_metadata({ENCODER_KEY: json.dumps(encoder, sort_keys=True)})
        with publish(storage, state_dir(STATE, dt)) as state, state.writer(schema=schema) as writer:
            writer.write(table.cast(schema))


def update_centroids(storage: Storage, dt: str, kept: Iterable[pa.RecordBatch], lookup: EmbeddingLookup,
                     dim: int | None = None) -> dict[str, int]:
    """Store the per-domain vector sums of day ``dt``'s kept docs (batches with doc_id, text, domain).

    Vectors come from ``lookup`` (semantic dedup's, so normally nothing is encoded). Returns kept docs per domain.
    """
    sums = CentroidSums()
    for batch in kept:
        if batch.num_rows:
            vectors = lookup.vectors(batch)
            dim = vectors.shape[1]
            sums.add(batch.column("domain"), vectors)
    if dim is None:
        from dctp_tasks.quality.embeddings import model_dim

        dim = model_dim(lookup.cfg)
    sums.write(storage, dt, dim, encoder_identity(lookup.cfg, dim))
    log.info("centroids dt=%s: kept docs per domain %s", dt, sums.counts)
    return dict(sums.counts)


def accepted_centroids(storage: Storage, dt: str, min_docs: int = 1,
                       encoder: dict | None = None) -> dict[str, np.ndarray]:
    """Return each domain's unit mean vector over the kept docs of dates strictly before ``dt``.

    Domains with fewer than ``min_docs`` kept docs are left out. With ``encoder``, only the dates whose sums that
    encoder made count: another encoder's vectors live in another space (those dates are skipped with a warning).
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for day, folder in earlier_partitions(storage, state_dir(STATE), dt):
        if encoder is not None:
            mismatch = encoder_mismatch(stored_encoder(storage.parquet_schema(folder)), encoder,
                                        keys=("model", "revision"))
            if mismatch:
                log.warning("relevance: centroids of dt=%s not used: %s", day, mismatch)
                continue
        table = storage.read_table(folder)
        matrix = table.column("sum").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        for name, count, row in zip(table.column("domain").to_pylist(), table.column("count").to_pylist(), matrix,
                                    strict=True):
            sums[name] = sums.get(name, 0.0) + row
            counts[name] = counts.get(name, 0) + count
    return {name: _unit(total) for name, total in sorted(sums.items()) if counts[name] >= min_docs}


def _blend(reference: np.ndarray | None, accepted: np.ndarray | None, weight: float) -> np.ndarray:
    if reference is None:
        return accepted
    if accepted is None:
        return reference
    return _unit(weight * reference + (1.0 - weight) * accepted)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector
