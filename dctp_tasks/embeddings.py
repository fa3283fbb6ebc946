"""Sentence embeddings shared by semantic dedup and the scorers: the encoder call, the stored layout, and the
encoder's identity recorded with every stored vector.

``state/embeddings/dt=D`` holds the day's surviving ``doc_id`` and L2-normalized vector; its Parquet schema
metadata names the encoder (``model``, ``revision``: a fingerprint of its weights, ``dim``). Vectors of different
encoders live in different spaces, so a reader compares identities before comparing vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

STATE = "embeddings"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
#: Width of the default model's vectors, known without loading it.
DEFAULT_DIM = 384
#: Parquet schema metadata key holding the encoder's identity (JSON).
ENCODER_KEY = b"dctp.encoder"
_SAMPLED_FILE = 8 << 20  # weight files above this are fingerprinted from samples, not read whole
_SAMPLES = 16
_SAMPLE_BYTES = 64 << 10


class EncoderSettings(Protocol):
    model: str | None
    device: str
    batch_size: int | str
    token_budget: int | str
    max_seq_length: int | None


CPU_ROWS = 64
"""Texts per forward pass on a CPU when the batch size is ``auto`` (MiniLM's cost barely changes above it)."""


def embed_texts(texts: list[str], cfg: EncoderSettings) -> np.ndarray:
    """Return the texts' L2-normalized embeddings as a float32 ``(len(texts), dim)`` matrix, in input order.

    Texts are tokenized by the model's own preprocessing in a worker thread, a chunk ahead of the model, and run in
    token-budget batches of similar lengths (``batching.feature_batches``); padding is masked, so a text's vector
    does not depend on the batch it lands in.
    """
    import torch
    import torch.nn.functional as F

    from dctp_tasks.batching import activation_bytes, feature_batches, resolve_limits
    from dctp_tasks.models import sentence_encoder

    model = sentence_encoder(cfg.model, cfg.device, cfg.max_seq_length)
    device = model.device
    max_length = model.max_seq_length if isinstance(model.max_seq_length, int) else 512
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    limits = resolve_limits(cfg.batch_size, cfg.token_budget, str(device), cpu_rows=CPU_ROWS, max_length=max_length,
                            bytes_per_token=activation_bytes(config, max_length, 2 if device.type == "cuda" else 4))
    texts = [t if isinstance(t, str) else "" for t in texts]
    out = np.empty((len(texts), _dimension(model)), dtype=np.float32)
    if not _plain_transformer(model):
        # a prompt, a static or packed-input model: its own encode, in batches of the configured rows
        if texts:
            out[:] = model.encode(texts, batch_size=limits.rows, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)
        return out
    with torch.inference_mode():
        for batch in feature_batches(len(texts), lambda rows: model.preprocess(texts[rows.start:rows.stop]), limits):
            vectors = model(batch.tensors(device))["sentence_embedding"]
            out[batch.rows] = F.normalize(vectors.float(), p=2, dim=1).cpu().numpy()
    return out


def _plain_transformer(model: object) -> bool:
    """Return whether the model's inputs are right-padded token rows with an attention mask and no default prompt.

    Those can be cut into token-budget batches; anything else (a default prompt, which ``encode`` may exclude from
    pooling; a static-embedding or packed-input model) goes through the model's own ``encode``.
    """
    if getattr(model, "default_prompt_name", None) or not isinstance(getattr(model, "max_seq_length", None), int):
        return False
    probe = model.preprocess(["a b"])
    mask = probe.get("attention_mask")
    return getattr(mask, "ndim", 0) == 2 and len(mask) == 1 and getattr(model.tokenizer, "padding_side",
                                                                             "right") == "right"


def model_dim(cfg: EncoderSettings) -> int:
    """Return the width of the model's vectors; the default MiniLM's is known without loading it."""
    if cfg.model is None:
        return DEFAULT_DIM
    from dctp_tasks.models import sentence_encoder

    return _dimension(sentence_encoder(cfg.model, cfg.device, cfg.max_seq_length))


def _dimension(model: object) -> int:
    # sentence-transformers 6 renamed the method; older releases only have the old name
    method = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(method())


def encoder_name(cfg: EncoderSettings) -> dict:
    """Return the encoder's name and a fingerprint of its weights (no model is loaded)."""
    return {"model": cfg.model or DEFAULT_MODEL_NAME, "revision": model_revision(cfg.model)}


def encoder_identity(cfg: EncoderSettings, dim: int | None = None) -> dict:
    """Return what makes an encoder's vectors comparable: its name, a fingerprint of its weights, its width."""
    return {**encoder_name(cfg), "dim": int(dim if dim is not None else model_dim(cfg))}


def model_revision(name_or_path: str | None) -> str:
    """Return a fingerprint of a model's files: a Hub snapshot's commit, else a hash of the local folder.

    The folder hash covers every file's name and size, the small files whole, and samples of the large ones (the
    weights), so a fine-tuned copy of the same architecture gets another fingerprint.
    """
    if name_or_path is None:
        from dctp_tasks.models import default_embedding_model

        folder = Path(default_embedding_model())
    elif os.path.isdir(name_or_path):
        folder = Path(name_or_path)
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception as exc:  # not in the local cache: the encoder cannot load either, and says so itself
            log.warning("cannot fingerprint model %s: %s", name_or_path, exc)
            return "unknown"
        return folder.name  # the snapshot folder is named by the Hub commit
    return _folder_fingerprint(str(folder.resolve()), _tree_stamp(folder))


def _tree_stamp(folder: Path) -> tuple:
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file()))


@lru_cache(maxsize=8)
def _folder_fingerprint(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for relative, size, _ in stamp:
        digest.update(f"{relative}\0{size}\0".encode())
        with open(os.path.join(folder, relative), "rb") as handle:
            if size <= _SAMPLED_FILE:
                digest.update(handle.read())
                continue
            for i in range(_SAMPLES):
                handle.seek((size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def embeddings_schema(dim: int, dtype: str = "float16", encoder: dict | None = None) -> pa.Schema:
    """Return the schema of ``state/embeddings``: one L2-normalized vector per surviving ``doc_id``."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    schema = pa.schema([("doc_id", pa.string()), ("embedding", pa.list_(value, dim))])
    return schema.with_metadata({ENCODER_KEY: json.dumps(encoder, sort_keys=True)}) if encoder else schema


def stored_encoder(schema: pa.Schema) -> dict | None:
    """Return the encoder identity recorded in stored vectors' schema (``None``: written before it was recorded)."""
    raw = (schema.metadata or {}).get(ENCODER_KEY)
    return json.loads(raw) if raw else None


def encoder_mismatch(stored: dict | None, wanted: dict, keys: tuple[str, ...] = ("model", "revision", "dim")
                     ) -> str | None:
    """Return why vectors by ``stored`` cannot be compared with ``wanted``'s (``None`` when they can)."""
    if stored is None:
        return "the vectors do not record which encoder made them (written by an older version)"
    changed = [f"{key} {stored.get(key)!r} (now {wanted[key]!r})" for key in keys if stored.get(key) != wanted[key]]
    return f"they were made by another encoder: {', '.join(changed)}" if changed else None


def vectors_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return a fixed-size-list column of vectors as a float32 ``(rows, dim)`` matrix."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), arr.type.list_size)


def vectors_column(matrix: np.ndarray, dtype: str = "float32") -> pa.FixedSizeListArray:
    """Return a ``(rows, dim)`` matrix as a fixed-size-list column of ``dtype`` values (the inverse of
    ``vectors_matrix``)."""
    dim = matrix.shape[1] if matrix.ndim == 2 and matrix.shape[1] else 1
    flat = np.ascontiguousarray(matrix, dtype=dtype).ravel()
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.from_numpy_dtype(flat.dtype)), dim)
