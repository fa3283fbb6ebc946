"""Embeddings for scorers: reuse semantic dedup's stored vectors (``state/embeddings/dt=D``), encode only the rest.

One ``EmbeddingLookup`` per (day, model) is shared by every scorer of a scoring task through
``ScoringContext.extra["embeddings"]`` (``EmbeddingLookup.shared``); its ``reused`` / ``encoded`` counts feed the
score report ("encoded twice: 0"). Stored and encoded vectors are L2-normalized float32 rows.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from dctp_tasks.config import AutoSize, SemanticDedupConfig
from dctp_tasks.embeddings import (
    STATE,
    embed_texts,
    encoder_identity,
    encoder_mismatch,
    model_dim,
    stored_encoder,
    vectors_matrix,
)
from dctp_tasks.publish import NotPublished, resolve
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.storage import Storage, state_dir

log = logging.getLogger(__name__)


class EmbeddingConfig(BaseModel):
    """The sentence encoder a scorer embeds with; keep it equal to ``dedup_semantic``'s so its vectors are reused."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """sentence-transformers model (Hugging Face id or local folder); ``None`` is the shipped all-MiniLM-L6-v2,
    the same default as ``dedup_semantic.model``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to encode; ``auto`` picks CUDA (half precision) when present, else the CPU."""
    batch_size: AutoSize = "auto"
    """Most texts per forward pass (as ``dedup_semantic.batch_size``); ``auto``: 64 on a CPU, up to 4,096 on CUDA."""
    token_budget: AutoSize = "auto"
    """Most padded tokens per forward pass (as ``dedup_semantic.token_budget``); ``auto`` follows the device."""
    max_seq_length: int | None = Field(None, ge=8)
    """Tokens per text read by the encoder (longer texts are truncated); ``None`` keeps the model's own (256)."""

    @classmethod
    def from_dedup(cls, cfg: SemanticDedupConfig) -> EmbeddingConfig:
        """Return the encoder semantic dedup used, so scorers reuse its stored vectors."""
        return cls(model=cfg.model, device=cfg.device, batch_size=cfg.batch_size, token_budget=cfg.token_budget,
                   max_seq_length=cfg.max_seq_length)

    def as_dedup(self) -> SemanticDedupConfig:
        return SemanticDedupConfig(model=self.model, device=self.device, batch_size=self.batch_size,
                                   token_budget=self.token_budget, max_seq_length=self.max_seq_length)

    def key(self) -> tuple:
        return (self.model, self.max_seq_length)


def encode(texts: list[str], cfg: EmbeddingConfig) -> np.ndarray:
    """Return the texts' L2-normalized float32 embeddings (the same encoder call as semantic dedup)."""
    return embed_texts(texts, cfg.as_dedup())


def document_vectors(storage: Storage, dt_of: list[str], doc_ids: list[str], texts: list[str],
                     config: EmbeddingConfig) -> tuple[np.ndarray, int]:
    """Return the vectors of documents of any dates, in input order, and how many of them were encoded.

    Each date's stored semantic-dedup vectors are reused; a document its date stored none for is encoded from its
    text. No documents: a ``(0, 0)`` matrix.
    """
    out: np.ndarray | None = None
    encoded = 0
    dates = np.asarray(dt_of, dtype=object)
    for day in sorted(set(dt_of)):
        where = np.flatnonzero(dates == day)
        lookup = EmbeddingLookup(storage, day, config)
        found = lookup.vectors(pa.table({"doc_id": pa.array([doc_ids[i] for i in where], pa.string()),
                                         "text": pa.array([texts[i] for i in where], pa.string())}))
        encoded += lookup.encoded
        if out is None:
            out = np.empty((len(doc_ids), found.shape[1]), dtype=np.float32)
        out[where] = found
    return (out if out is not None else np.zeros((0, 0), dtype=np.float32)), encoded


class EmbeddingLookup:
    """The day's vectors by ``doc_id``: stored ones are read back, missing ones encoded, each counted.

    Memory stays bounded: the day's stored ``doc_id`` column is loaded once (the row index), vectors are read per
    batch with ``Storage.take_rows``. The last batch's vectors are kept, so several scorers asking for the same
    batch cost one lookup and never encode a row twice.
    """

    def __init__(self, storage: Storage, dt: str, cfg: EmbeddingConfig | None = None) -> None:
        self.storage = storage
        self.dt = dt
        self.cfg = cfg or EmbeddingConfig()
        self.reused = 0
        self.encoded = 0
        self._index: pa.Array | None = None
        self._folder: str | None = None
        self._last: tuple[pa.Array, np.ndarray] | None = None

    @classmethod
    def shared(cls, context: ScoringContext, cfg: EmbeddingConfig | None = None) -> EmbeddingLookup:
        """Return the context's lookup for ``cfg``'s model, creating it on first use (one per day and model)."""
        cfg = cfg or EmbeddingConfig()
        lookups = context.extra.setdefault("embeddings", {})
        key = cfg.key()
        if key not in lookups:
            lookups[key] = cls(context.storage, context.dt, cfg)
        return lookups[key]

    @property
    def stats(self) -> dict[str, int]:
        """Rows whose stored vector was reused, and rows encoded here (the report's "encoded twice")."""
        return {"reused": self.reused, "encoded": self.encoded}

    def stored_ids(self) -> pa.Array:
        """Return the ``doc_id`` of every stored row of the day, in row order (empty when none can be reused)."""
        if self._index is None:
            self._index = self._load_index()
        return self._index

    def _load_index(self) -> pa.Array:
        try:
            # Resolved once: the row numbers of the index and the vectors read later come from one version.
            folder = resolve(self.storage, state_dir(STATE, self.dt))
        except NotPublished:
            log.info("no stored embeddings for dt=%s: every row will be encoded", self.dt)
            return pa.array([], pa.string())
        # Vectors of another encoder live in another space: scoring them against this model's would be meaningless.
        mismatch = encoder_mismatch(stored_encoder(self.storage.parquet_schema(folder)), encoder_identity(self.cfg))
        if mismatch:
            log.warning("stored embeddings of dt=%s not reused: %s", self.dt, mismatch)
            return pa.array([], pa.string())
        self._folder = folder
        ids = self.storage.read_table(folder, columns=["doc_id"]).column("doc_id").combine_chunks()
        log.info("reusing %d stored embeddings of dt=%s", len(ids), self.dt)
        return ids

    def vectors(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Return the batch's vectors as float32 ``(rows, dim)``, in row order (needs ``doc_id`` and ``text``)."""
        ids = batch.column("doc_id")
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        if self._last is not None and self._last[0].equals(ids):
            return self._last[1]
        stored = self.stored_ids()
        where = pc.index_in(ids, value_set=stored).to_numpy(zero_copy_only=False) if len(stored) else None
        found = np.zeros(len(ids), dtype=bool) if where is None else ~np.isnan(where.astype(np.float64))
        out: np.ndarray | None = None
        if found.any():
            rows = where[found].astype(np.int64)
            order = np.argsort(rows, kind="stable")
            unique, inverse = np.unique(rows[order], return_inverse=True)
            table = self.storage.take_rows(self._folder, rows=unique, columns=["embedding"])
            read = vectors_matrix(table.column("embedding"))[inverse]
            out = np.empty((len(ids), read.shape[1]), dtype=np.float32)
            positions = np.flatnonzero(found)[order]
            out[positions] = read
        missing = np.flatnonzero(~found)
        if len(missing):
            texts = pc.fill_null(batch.column("text"), "")
            texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
            fresh = encode(texts.take(pa.array(missing)).to_pylist(), self.cfg)
            if out is None:
                out = np.empty((len(ids), fresh.shape[1]), dtype=np.float32)
            out[missing] = fresh
        if out is None:
            out = np.zeros((0, model_dim(self.cfg)), dtype=np.float32)
        self.reused += int(found.sum())
        self.encoded += len(missing)
        self._last = (ids, out)
        return out
