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

from dctp_tasks.config import SemanticDedupConfig
from dctp_tasks.dedup.semantic import STATE, embed_texts
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.storage import Storage, state_dir

log = logging.getLogger(__name__)

#: Width of the default model's vectors (all-MiniLM-L6-v2), known without loading it.
MINILM_DIM = 384
#: Parquet schema metadata key naming the model that wrote stored vectors (checked when present).
MODEL_METADATA_KEY = b"dctp.embedding_model"


class EmbeddingConfig(BaseModel):
    """The sentence encoder a scorer embeds with; keep it equal to ``dedup_semantic``'s so its vectors are reused."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """sentence-transformers model (Hugging Face id or local folder); ``None`` is the shipped all-MiniLM-L6-v2,
    the same default as ``dedup_semantic.model``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to encode; ``auto`` picks CUDA (half precision) when present, else the CPU (DESIGN §7)."""
    batch_size: int = Field(64, ge=1)
    """Texts per forward pass; 64 suits MiniLM on CPU (as ``dedup_semantic.batch_size``), raise it on a GPU."""
    max_seq_length: int | None = Field(None, ge=8)
    """Tokens per text read by the encoder (longer texts are truncated); ``None`` keeps the model's own (256)."""

    @classmethod
    def from_dedup(cls, cfg: SemanticDedupConfig) -> EmbeddingConfig:
        """Return the encoder semantic dedup used, so scorers reuse its stored vectors."""
        return cls(model=cfg.model, device=cfg.device, batch_size=cfg.batch_size, max_seq_length=cfg.max_seq_length)

    def as_dedup(self) -> SemanticDedupConfig:
        return SemanticDedupConfig(model=self.model, device=self.device, batch_size=self.batch_size,
                                   max_seq_length=self.max_seq_length)

    def key(self) -> tuple:
        return (self.model, self.max_seq_length)


def encode(texts: list[str], cfg: EmbeddingConfig) -> np.ndarray:
    """Return the texts' L2-normalized float32 embeddings (the same encoder call as semantic dedup)."""
    return embed_texts(texts, cfg.as_dedup())


def model_dim(cfg: EmbeddingConfig) -> int:
    """Return the width of the model's vectors; the default MiniLM's is known without loading it."""
    if cfg.model is None:
        return MINILM_DIM
    from dctp_tasks.models import sentence_encoder

    return int(sentence_encoder(cfg.model, cfg.device, cfg.max_seq_length).get_sentence_embedding_dimension())


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
        folder = state_dir(STATE, self.dt)
        if not self.storage.list_files(folder):
            log.info("no stored embeddings in %s: every row will be encoded", folder)
            return pa.array([], pa.string())
        schema = self.storage.parquet_schema(folder)
        stored_dim = schema.field("embedding").type.list_size
        made_by = (schema.metadata or {}).get(MODEL_METADATA_KEY)
        wanted = self.cfg.model or "all-MiniLM-L6-v2"
        # Vectors of another model live in another space: scoring them against this model's would be meaningless.
        if made_by is not None and made_by.decode() != wanted:
            log.warning("%s holds %s embeddings, not %s: not reused", folder, made_by.decode(), wanted)
            return pa.array([], pa.string())
        if stored_dim != model_dim(self.cfg):
            log.warning("%s holds %d-d embeddings; %s makes %d-d ones: not reused", folder, stored_dim, wanted,
                        model_dim(self.cfg))
            return pa.array([], pa.string())
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
            table = self.storage.take_rows(state_dir(STATE, self.dt), rows=unique, columns=["embedding"])
            read = _matrix(table.column("embedding"))[inverse]
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


def _matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return a fixed-size-list column of vectors as a float32 ``(rows, dim)`` matrix."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), arr.type.list_size)
